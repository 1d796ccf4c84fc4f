"""Whisper's language codes in token order, with English names (verbose_json reports names)."""

from __future__ import annotations

# Order matters: a multilingual vocabulary's language tokens follow <|startoftranscript|>
# in exactly this order (large-v3 adds "yue" at the end).
_TABLE = (
    "en english, zh chinese, de german, es spanish, ru russian, ko korean, fr french, "
    "ja japanese, pt portuguese, tr turkish, pl polish, ca catalan, nl dutch, ar arabic, "
    "sv swedish, it italian, id indonesian, hi hindi, fi finnish, vi vietnamese, he hebrew, "
    "uk ukrainian, el greek, ms malay, cs czech, ro romanian, da danish, hu hungarian, "
    "ta tamil, no norwegian, th thai, ur urdu, hr croatian, bg bulgarian, lt lithuanian, "
    "la latin, mi maori, ml malayalam, cy welsh, sk slovak, te telugu, fa persian, "
    "lv latvian, bn bengali, sr serbian, az azerbaijani, sl slovenian, kn kannada, "
    "et estonian, mk macedonian, br breton, eu basque, is icelandic, hy armenian, "
    "ne nepali, mn mongolian, bs bosnian, kk kazakh, sq albanian, sw swahili, gl galician, "
    "mr marathi, pa punjabi, si sinhala, km khmer, sn shona, yo yoruba, so somali, "
    "af afrikaans, oc occitan, ka georgian, be belarusian, tg tajik, sd sindhi, "
    "gu gujarati, am amharic, yi yiddish, lo lao, uz uzbek, fo faroese, "
    "ht haitian creole, ps pashto, tk turkmen, nn nynorsk, mt maltese, sa sanskrit, "
    "lb luxembourgish, my myanmar, bo tibetan, tl tagalog, mg malagasy, as assamese, "
    "tt tatar, haw hawaiian, ln lingala, ha hausa, ba bashkir, jw javanese, su sundanese, "
    "yue cantonese"
)

LANGUAGES: dict[str, str] = dict(
    (code, name) for code, _, name in (item.partition(" ") for item in _TABLE.split(", "))
)
LANGUAGE_CODES: tuple[str, ...] = tuple(LANGUAGES)
# Names and common aliases a client may send instead of the ISO code.
_ALIASES = {
    "burmese": "my",
    "valencian": "ca",
    "flemish": "nl",
    "haitian": "ht",
    "letzeburgesch": "lb",
    "pushto": "ps",
    "panjabi": "pa",
    "moldavian": "ro",
    "moldovan": "ro",
    "sinhalese": "si",
    "castilian": "es",
    "mandarin": "zh",
}
# Scripts written without spaces: words are split per character group, not on spaces.
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})


def normalize_language(value: str) -> str | None:
    """ISO code for a code, English name or alias (case-insensitive); None when unknown."""
    key = value.strip().lower()
    if key in LANGUAGES:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    for code, name in LANGUAGES.items():
        if name == key:
            return code
    # "en-US" / "pt_BR" style tags
    base = key.replace("_", "-").split("-")[0]
    return base if base in LANGUAGES else None


def language_name(code: str) -> str:
    return LANGUAGES.get(code, code)
