"""OpenAI's wire protocol: request schemas, the error envelope, SSE framing.

No FastAPI and no engine here: both `app.api` (routes) and `app.serving` (request
handling) import it.
"""
