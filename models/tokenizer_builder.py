"""A small Qwen-style byte-level BPE tokenizer, trained locally, for synthetic checkpoints.

Nothing is downloaded: the tokenizer is trained with `tokenizers` on a generated English-ish
corpus, so every synthetic checkpoint gets the same vocabulary (the training is
deterministic, and the result is cached in memory and on disk under the Baton cache dir).

The pipeline is exactly the one transformers' `Qwen2Tokenizer` builds (NFC, the Qwen split
regex, byte-level without regex, byte-level decoder), so loading the files with
`AutoTokenizer` gives the same ids as loading tokenizer.json with `tokenizers` directly.
Special tokens follow Qwen's order after the learned vocabulary; eos is `<|im_end|>`.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import tempfile
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

# Qwen's pre-tokenizer regex (the one Qwen2Tokenizer uses).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# (content, special) in Qwen's id order. <think>/</think> are ordinary added tokens in Qwen3
# (kept on decode), the rest are special (dropped by skip_special_tokens).
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<think>", False),
    ("</think>", False),
)

DEFAULT_VOCAB_SIZE = 2048  # learned tokens + bytes + added tokens, at most
TOKENIZER_VERSION = 1  # bump when the corpus or training changes (invalidates the disk cache)

# Qwen-style chat template: string content or lists of text / image / image_url / video parts;
# one <|vision_start|><|image_pad|><|vision_end|> per image, optional "Picture N: " labels.
CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}"
    "{%- set video_count = namespace(value=0) -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part.type == 'image' or part.type == 'image_url' or 'image' in part or 'image_url' in part -%}"
    "{%- set image_count.value = image_count.value + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Picture ' ~ image_count.value ~ ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part.type == 'video' or 'video' in part -%}"
    "{%- set video_count.value = video_count.value + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Video ' ~ video_count.value ~ ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif part.type == 'text' or 'text' in part -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

_WORDS = """
the a an this that these those it its is are was were be been being has have had do does did
can could will would should may might must not no yes and or but if then so because while when
where what which who whom whose why how all any each every some many much more most few less
one two three four five six seven eight nine ten first second third last next other same
image picture photo scene view frame left right top bottom middle center front back above below
near far inside outside behind between under over on in at of to from with without into onto by
for about after before during through across around up down out off again further once here there
red green blue yellow orange purple black white gray grey brown pink dark light bright pale
circle square triangle rectangle line dot shape color size number count object objects
cat dog bird horse cow sheep fish car bus truck bicycle boat train plane tree flower grass sky
cloud sun moon star water river lake sea mountain hill road street house building window door
table chair cup bottle book phone computer screen sign text word letter person people man woman
child boy girl hand face head eye hair shirt hat ball box bag wall floor room kitchen garden
large small big tiny tall short long wide narrow old new young round flat empty full open closed
answer question option choice correct wrong true false reason reasoning think step steps because
therefore thus hence first then finally let us look see notice compare check count find choose
shows contains depicts appears looks seems holding standing sitting walking running flying
lying playing eating reading writing wearing carrying pointing facing moving parked painted
describe explain identify determine select estimate calculate measure answer best most likely
""".split()

_TEMPLATES = (
    "What is the {adj} {noun} in the {place} of the image?",
    "How many {noun}s are in the picture?",
    "The {noun} on the {place} is {adj}.",
    "Let me think step by step. First, I look at the {noun}. It is {adj}, so the answer is {opt}.",
    "Question: Which {noun} is {adj}? Options: A. {noun2} B. {noun} C. {noun3} D. none",
    "Answer: {opt}",
    "There are {num} {noun}s and {num2} {noun2}s near the {noun3}.",
    "The image shows a {adj} {noun} {verb} {prep} a {adj2} {noun2}.",
    "Therefore, the correct option is {opt} because the {noun} is {adj}.",
    "Describe the scene: a {noun} is {verb} {prep} the {noun2}, and the sky is {adj}.",
)

_NOUNS = [w for w in _WORDS[_WORDS.index("cat"):_WORDS.index("garden") + 1]]
_ADJS = [w for w in _WORDS[_WORDS.index("red"):_WORDS.index("pink") + 1]] + [
    w for w in _WORDS[_WORDS.index("large"):_WORDS.index("closed") + 1]
]
_VERBS = [w for w in _WORDS[_WORDS.index("holding"):_WORDS.index("painted") + 1]]
_PREPS = ["on", "in", "near", "under", "over", "behind", "beside", "inside", "above", "below"]
_PLACES = ["left", "right", "top", "bottom", "middle", "center", "front", "back"]


def training_corpus(num_lines: int = 6000, seed: int = 0) -> list[str]:
    """Deterministic English-ish lines: templated VQA-style sentences, word salad, numbers."""
    rng = random.Random(seed)
    lines: list[str] = []
    for i in range(num_lines):
        kind = i % 4
        if kind < 2:
            tpl = rng.choice(_TEMPLATES)
            line = tpl.format(
                adj=rng.choice(_ADJS), adj2=rng.choice(_ADJS), noun=rng.choice(_NOUNS),
                noun2=rng.choice(_NOUNS), noun3=rng.choice(_NOUNS), verb=rng.choice(_VERBS),
                prep=rng.choice(_PREPS), place=rng.choice(_PLACES), opt=rng.choice("ABCD"),
                num=rng.randint(0, 20), num2=rng.randint(0, 100),
            )
        elif kind == 2:
            words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 16))]
            words[0] = words[0].capitalize()
            line = " ".join(words) + rng.choice([".", "?", "!", ",", ":", ";"])
        else:
            line = " ".join(
                rng.choice([str(rng.randint(0, 9999)), f"{rng.random():.3f}", rng.choice(_WORDS).upper(),
                            "(" + rng.choice(_WORDS) + ")", '"' + rng.choice(_WORDS) + '"', "-", "=", "+"])
                for _ in range(rng.randint(3, 10))
            )
        lines.append(line)
    return lines


def _cache_root() -> Path:
    root = os.environ.get("BATON_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "baton"


def _train(vocab_size: int) -> str:
    special = [content for content, _ in ADDED_TOKENS]
    tok = Tokenizer(models.BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                               fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(special),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    # Added tokens go after the learned vocabulary, in Qwen's order.
    tok.add_tokens([AddedToken(c, special=s, normalized=False) for c, s in ADDED_TOKENS])
    return tok.to_str()


@functools.lru_cache(maxsize=4)
def tokenizer_json(vocab_size: int = DEFAULT_VOCAB_SIZE) -> str:
    """The serialized tokenizer (tokenizer.json contents). Trained once, then cached."""
    key = hashlib.sha256(f"v{TOKENIZER_VERSION}-{vocab_size}".encode()).hexdigest()[:16]
    path = _cache_root() / "tokenizers" / f"qwen-bpe-{vocab_size}-{key}.json"
    try:
        text = path.read_text()
        Tokenizer.from_str(text)  # a truncated or corrupt cache file is retrained below
        return text
    except Exception:
        pass
    text = _train(vocab_size)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        pass  # the cache is an optimisation; a read-only home still works
    return text


def build_tokenizer(vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    return Tokenizer.from_str(tokenizer_json(vocab_size))


def special_token_ids(tok: Tokenizer) -> dict[str, int]:
    """Content -> id for every added token."""
    ids = {}
    for content, _ in ADDED_TOKENS:
        tid = tok.token_to_id(content)
        if tid is None:
            raise ValueError(f"tokenizer lacks {content}")
        ids[content] = tid
    return ids


def write_tokenizer_files(out_dir: str | Path, vocab_size: int = DEFAULT_VOCAB_SIZE,
                          model_max_length: int = 262144) -> dict[str, int]:
    """Write tokenizer.json and tokenizer_config.json (with the chat template) into out_dir.

    Returns the special-token ids (content -> id) and "vocab_size" (the tokenizer's size).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(vocab_size)
    (out / "tokenizer.json").write_text(tok.to_str())
    ids = special_token_ids(tok)
    added = {
        str(ids[content]): {
            "content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": special,
        }
        for content, special in ADDED_TOKENS
    }
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": [c for c, s in ADDED_TOKENS if s and c not in ("<|endoftext|>",)],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return {**ids, "vocab_size": tok.get_vocab_size(with_added_tokens=True)}
