"""The legacy /v1/completions request (prompt in, text out)."""

from __future__ import annotations

from pydantic import Field, model_validator

from app.protocol.sampling import GenerationFields

MAX_COMPLETION_LOGPROBS = 5  # OpenAI's own limit for this endpoint
DEFAULT_MAX_TOKENS = 16  # OpenAI's default here (chat's is the rest of the context)
MAX_PROMPTS = 64


class CompletionRequest(GenerationFields):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(min_length=1)
    """One or several prompts, as text or token ids."""
    max_tokens: int | None = Field(default=DEFAULT_MAX_TOKENS, ge=1)
    echo: bool = False
    """Put the prompt in front of the completion."""
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    """Log-probabilities of the sampled tokens and this many alternatives at each."""
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) > MAX_PROMPTS and \
                not isinstance(self.prompt[0], int):
            raise ValueError(f"at most {MAX_PROMPTS} prompts in one request")
        return self

    def prompts(self) -> list[str | list[int]]:
        """Each prompt, as text or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]
