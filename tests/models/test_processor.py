"""Processor: token ids, pixels and M-RoPE positions equal transformers' (the oracle); typed errors."""
from __future__ import annotations

import base64
import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, Qwen3VLConfig, Qwen3VLModel, Qwen3VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from baton.errors import CheckpointError, InvalidRequestError
from baton.models.image_io import content_hash, load_image
from baton.models.processor import IMAGE_PLACEHOLDER, ImageInput, Processor, ProcessedPrompt, mrope_positions
from baton.models.synthetic import build_synthetic_checkpoint


class _ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """transformers' Qwen3-VL processor without its video half (which needs torchvision)."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor":
            return type(argument)
        return super().check_argument_for_proper_class(argument_name, argument)


def _random_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (height, width, 3), dtype=np.uint8))


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_synthetic_checkpoint(tmp_path_factory.mktemp("ckpt"), "tiny")


@pytest.fixture(scope="module")
def proc(ckpt):
    return Processor(ckpt)


@pytest.fixture(scope="module")
def hf_processor(ckpt):
    tok = AutoTokenizer.from_pretrained(ckpt)
    return _ImageOnlyQwen3VLProcessor(image_processor=Qwen2VLImageProcessorPil.from_pretrained(ckpt),
                                      tokenizer=tok, video_processor=object(), chat_template=tok.chat_template)


@pytest.fixture(scope="module")
def hf_model(ckpt):
    cfg = Qwen3VLConfig(**json.loads((ckpt / "config.json").read_text()))
    with torch.device("meta"):  # get_rope_index only reads the config
        return Qwen3VLModel(cfg)


IMG_A = _random_image(100, 70, seed=0)
IMG_B = _random_image(90, 200, seed=1)  # other size and aspect ratio

ONE_IMAGE = [{"role": "user", "content": [{"type": "image", "image": IMG_A},
                                          {"type": "text", "text": "What is in the image?"}]}]
TWO_IMAGES = [
    {"role": "system", "content": "Answer with one letter."},
    {"role": "user", "content": [{"type": "text", "text": "Compare"}, {"type": "image", "image": IMG_A},
                                 {"type": "text", "text": "with"}, {"type": "image", "image": IMG_B},
                                 {"type": "text", "text": "Which is taller? A or B"}]},
]
TEXT_ONLY = [{"role": "user", "content": "How many cats are in the picture?"}]
CASES = {"one_image": (ONE_IMAGE, [IMG_A]), "two_images": (TWO_IMAGES, [IMG_A, IMG_B]), "text_only": (TEXT_ONLY, [])}


def _oracle(hf_processor, text, images):
    kwargs = {"images": images} if images else {}
    return hf_processor(text=[text], return_tensors="pt", **kwargs)


@pytest.mark.parametrize("case", list(CASES))
def test_tokens_pixels_and_grids_match_transformers(case, proc, hf_processor):
    messages, images = CASES[case]
    text, _ = proc.render_chat(messages)
    ours = proc.process(text, images)
    ref = _oracle(hf_processor, text, images)
    assert ours.token_ids == ref["input_ids"][0].tolist()
    if images:
        assert torch.equal(torch.cat([im.pixel_values for im in ours.images]), ref["pixel_values"])
        assert [im.grid_thw for im in ours.images] == [tuple(g) for g in ref["image_grid_thw"].tolist()]
        assert all(im.pixel_values.dtype == torch.float32 for im in ours.images)
    else:
        assert ours.images == []


@pytest.mark.parametrize("case", list(CASES))
def test_mrope_positions_match_get_rope_index(case, proc, hf_processor, hf_model):
    messages, images = CASES[case]
    text, _ = proc.render_chat(messages)
    ours = proc.process(text, images)
    ref = _oracle(hf_processor, text, images)
    pos, delta = hf_model.get_rope_index(ref["input_ids"], ref["mm_token_type_ids"],
                                         image_grid_thw=ref.get("image_grid_thw"))
    expected, expected_delta = pos[:, 0], int(delta[0, 0])
    assert ours.mrope_positions.dtype == torch.long
    assert torch.equal(ours.mrope_positions, expected)
    assert ours.mrope_delta == expected_delta


def test_image_inputs_describe_their_place_in_the_prompt(proc):
    text, images = proc.render_chat(TWO_IMAGES)
    out = proc.process(text, images)
    assert len(out.images) == 2
    for im in out.images:
        t, h, w = im.grid_thw
        assert im.num_tokens == t * h * w // proc.merge_size**2
        assert im.pixel_values.shape == (t * h * w, 3 * proc.temporal_patch_size * proc.patch_size**2)
        run = out.token_ids[im.offset:im.offset + im.num_tokens]
        assert run == [proc.image_token_id] * im.num_tokens
        assert out.token_ids[im.offset - 1] == proc.vision_start_token_id
        assert out.token_ids[im.offset + im.num_tokens] == proc.vision_end_token_id
    assert out.images[0].content_hash != out.images[1].content_hash


def test_mrope_delta_gives_the_positions_of_later_tokens(proc):
    text, images = proc.render_chat(TWO_IMAGES)
    prompt = proc.process(text, images)
    longer = proc.process(text + "B because it is taller.", images)
    n = len(prompt.token_ids)
    assert longer.token_ids[:n] == prompt.token_ids
    later = torch.arange(n, len(longer.token_ids)) + prompt.mrope_delta
    assert torch.equal(longer.mrope_positions[:, n:], later.expand(3, -1))
    assert prompt.mrope_delta < 0  # an image of k tokens spans fewer than k positions


def test_text_after_an_image_continues_at_max_plus_one(proc):
    out = proc.process(f"a{IMAGE_PLACEHOLDER}b", [IMG_B])
    im = out.images[0]
    end = im.offset + im.num_tokens
    assert out.mrope_positions[:, end].unique().numel() == 1
    assert int(out.mrope_positions[0, end]) == int(out.mrope_positions[:, :end].max()) + 1


def test_adjacent_images_are_kept_apart():
    # two 2x2-merged images with no token between them: positions follow image by image
    grids = [(1, 4, 4), (1, 2, 4)]
    pos, delta = mrope_positions([7, 9, 9, 9, 9, 9, 9, 5], 9, grids, 2)
    assert pos.tolist() == [[0, 1, 1, 1, 1, 3, 3, 5],
                            [0, 1, 1, 2, 2, 3, 3, 5],
                            [0, 1, 2, 1, 2, 3, 4, 5]]
    assert delta == 6 - 8


def test_prompt_as_token_ids(proc):
    text, images = proc.render_chat(TWO_IMAGES)
    from_text = proc.process(text, images)
    raw_ids = proc.tokenizer.encode(text, add_special_tokens=False)
    for ids in (raw_ids, from_text.token_ids):  # one pad per image, or already expanded
        out = proc.process_ids(ids, images)
        assert out.token_ids == from_text.token_ids
        assert torch.equal(out.mrope_positions, from_text.mrope_positions)
        assert out.mrope_delta == from_text.mrope_delta
        assert [im.offset for im in out.images] == [im.offset for im in from_text.images]
    pos, delta = proc.positions_for(from_text.token_ids, [im.grid_thw for im in from_text.images])
    assert torch.equal(pos, from_text.mrope_positions) and delta == from_text.mrope_delta


def test_token_id_prompts_take_generated_special_ids_as_text(proc):
    # a model can generate any id below its vocab_size, <|video_pad|> included
    ids = proc.tokenizer.encode("hi", add_special_tokens=False) + [proc.video_token_id, proc.vocab_size - 1]
    out = proc.process_ids(ids, [])
    assert out.token_ids == ids
    assert torch.equal(out.mrope_positions, torch.arange(len(ids)).expand(3, -1))


@pytest.mark.parametrize("ids,images,match", [
    ([1, -1], [], r"\[0, "),
    ([1, 10**6], [], r"\[0, "),
    (["a"], [], "integers"),
    ([1, 2], [IMG_A], "0 <\\|image_pad\\|> token.* but 1 image"),
    ([], [], "empty"),
])
def test_bad_token_id_prompts_raise(proc, ids, images, match):
    with pytest.raises(InvalidRequestError, match=match):
        proc.process_ids(ids, images)


def test_split_expanded_image_run_raises(proc):
    img = proc.preprocess_image(IMG_A)
    pad = proc.image_token_id
    ids = [1] + [pad] * (img.num_tokens - 1) + [2, pad]
    with pytest.raises(InvalidRequestError, match="consecutive"):
        proc.process_ids(ids, [img])


def test_process_chat_is_render_then_process(proc):
    text, images = proc.render_chat(ONE_IMAGE)
    assert proc.process_chat(ONE_IMAGE).token_ids == proc.process(text, images).token_ids


def test_render_chat_accepts_every_part_form(proc, tmp_path):
    path = tmp_path / "a.png"
    IMG_A.save(path)
    url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    messages = [{"role": "user", "content": [
        {"type": "image", "image": IMG_A}, {"type": "image", "image": str(path)},
        {"type": "image", "image": path}, {"type": "image", "image": path.read_bytes()},
        {"type": "image_url", "image_url": {"url": url}}, {"type": "image_url", "image_url": {"url": str(path)}},
        {"type": "text", "text": "same?"},
    ]}]
    text, images = proc.render_chat(messages)
    assert text.count(IMAGE_PLACEHOLDER) == 6 and len(images) == 6
    assert text.endswith("<|im_start|>assistant\n")
    out = proc.process(text, images)
    assert len({im.content_hash for im in out.images}) == 1


def test_decode_and_eos(proc):
    ids = proc.tokenizer.encode("<|im_start|>assistant\nA red cat.<|im_end|>", add_special_tokens=False)
    assert proc.decode(ids) == "assistant\nA red cat."
    assert proc.decode(ids, skip_special_tokens=False) == "<|im_start|>assistant\nA red cat.<|im_end|>"
    assert proc.eos_token_ids[0] == proc.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert proc.tokenizer.convert_tokens_to_ids("<|endoftext|>") in proc.eos_token_ids


# ---- bad requests ----

@pytest.mark.parametrize("text,images,match", [
    (f"look {IMAGE_PLACEHOLDER}", [], "1 image placeholder.* but 0 image"),
    ("no placeholder", [IMG_A], "0 image placeholder.* but 1 image"),
    (f"{IMAGE_PLACEHOLDER}{IMAGE_PLACEHOLDER}", [IMG_A], "2 image placeholder.* but 1 image"),
    ("bare <|image_pad|>", [IMG_A], "outside"),
    ("<|vision_start|><|video_pad|><|vision_end|>", [], "video"),
    ("", [], "empty"),
])
def test_placeholder_mismatch_raises(proc, text, images, match):
    with pytest.raises(InvalidRequestError, match=match):
        proc.process(text, images)


@pytest.mark.parametrize("messages,match", [
    ([], "non-empty list"),
    ({"role": "user", "content": "hi"}, "non-empty list"),
    (["hi"], r"messages\[0\] must be a dict"),
    ([{"content": "hi"}], "role"),
    ([{"role": "wizard", "content": "hi"}], "role"),
    ([{"role": "user"}], "no content"),
    ([{"role": "user", "content": 42}], "string or a list"),
    ([{"role": "user", "content": [{"type": "audio", "audio": b""}]}], "unsupported part type"),
    ([{"role": "user", "content": [{"type": "text"}]}], "text part"),
    ([{"role": "user", "content": [{"type": "image"}]}], "image part"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "image_url.url"),
    ([{"role": "user", "content": [7]}], "must be a dict"),
])
def test_malformed_messages_raise(proc, messages, match):
    with pytest.raises(InvalidRequestError, match=match):
        proc.render_chat(messages)


def _bad_sources(tmp_path):
    png = _encode(IMG_A, "PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    return {
        "garbage bytes": (b"\x00\x01not an image", "not a readable image"),
        "empty bytes": (b"", "empty"),
        "truncated png": (png[: len(png) // 2], "not a readable image"),
        "missing file": (str(tmp_path / "missing.png"), "does not exist"),
        "directory": (str(tmp_path), "not a file"),
        "text file": (tmp_path / "notes.txt", "not a readable image"),
        "remote url": ("https://example.com/cat.png", "remote images are not fetched"),
        "non-image data url": ("data:text/plain;base64,aGVsbG8=", "not an image"),
        "data url without base64": ("data:image/png,rawdata", "base64"),
        "corrupt base64": ("data:image/png;base64,@@@@", "invalid base64"),
        "base64 of garbage": ("data:image/png;base64," + base64.b64encode(b"nope").decode(), "not a readable"),
        "unsupported type": (12345, "unsupported image type"),
        "float array": (np.zeros((4, 4, 3), dtype=np.float32), "uint8"),
    }


def test_unreadable_images_raise(proc, tmp_path):
    for name, (source, match) in _bad_sources(tmp_path).items():
        with pytest.raises(InvalidRequestError, match=match):
            proc.load_image(source)
        with pytest.raises(InvalidRequestError):  # and through the chat path
            proc.process_chat([{"role": "user", "content": [{"type": "image", "image": source}]}])


def test_invalid_request_error_is_a_value_error():
    assert issubclass(InvalidRequestError, ValueError)


# ---- checkpoint errors ----

@pytest.mark.parametrize("damage,file", [
    ("remove", "tokenizer.json"),
    ("corrupt", "tokenizer.json"),
    ("corrupt", "tokenizer_config.json"),
    ("remove", "preprocessor_config.json"),
    ("corrupt", "preprocessor_config.json"),
])
def test_broken_checkpoint_files_raise_checkpoint_error(ckpt, tmp_path, damage, file):
    broken = tmp_path / "ckpt"
    shutil.copytree(ckpt, broken)
    if damage == "remove":
        (broken / file).unlink()
    else:
        (broken / file).write_text('{"truncated": ')
    with pytest.raises(CheckpointError, match=file.replace(".", r"\.")):
        Processor(broken)


def test_missing_checkpoint_dir_raises(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Processor(tmp_path / "nowhere")


def test_unsupported_image_processor_raises(ckpt, tmp_path):
    broken = tmp_path / "ckpt"
    shutil.copytree(ckpt, broken)
    cfg = json.loads((broken / "preprocessor_config.json").read_text())
    cfg["image_processor_type"] = "CLIPImageProcessor"
    (broken / "preprocessor_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="image_processor_type"):
        Processor(broken)


def test_real_qwen3_vl_preprocessor_config_loads(ckpt, tmp_path):
    real = tmp_path / "ckpt"
    shutil.copytree(ckpt, real)
    shutil.copy("models/configs/preprocessor_config.json", real / "preprocessor_config.json")
    p = Processor(real)
    assert (p.patch_size, p.merge_size) == (16, 2)
    assert p.preprocess_image(IMG_A).num_tokens >= 64  # real min_pixels: 256*256


# ---- image decoding and hashing ----

def test_every_source_form_decodes_to_the_same_rgb_pixels(tmp_path):
    path = tmp_path / "a.png"
    IMG_A.save(path)
    data = path.read_bytes()
    sources = [IMG_A, str(path), path, "file://" + str(path), data, bytearray(data),
               "data:image/png;base64," + base64.b64encode(data).decode(), np.asarray(IMG_A)]
    for src in sources:
        img = load_image(src)
        assert img.mode == "RGB" and img.size == IMG_A.size
        assert img.tobytes() == IMG_A.tobytes()


def test_transparency_is_composited_on_white_like_transformers(proc, hf_processor):
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 128), (0, 0, 32, 64))
    assert load_image(rgba).getpixel((48, 10)) == (255, 255, 255)
    ours = proc.process(IMAGE_PLACEHOLDER, [rgba])
    ref = hf_processor(text=[IMAGE_PLACEHOLDER], images=[rgba], return_tensors="pt")
    assert torch.equal(ours.images[0].pixel_values, ref["pixel_values"])


def test_exif_orientation_is_applied():
    img = _random_image(40, 20, seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    loaded = load_image(_encode(img, "JPEG", exif=exif.tobytes()))
    assert loaded.size == (20, 40)


def test_same_pixels_same_hash_whatever_the_container():
    jpeg_decoded = load_image(_encode(IMG_A, "JPEG", quality=80))
    as_png = load_image(_encode(jpeg_decoded, "PNG"))
    as_bmp = load_image(_encode(jpeg_decoded, "BMP"))
    assert content_hash(jpeg_decoded) == content_hash(as_png) == content_hash(as_bmp)
    assert content_hash(load_image(_encode(IMG_A, "PNG"))) == content_hash(load_image(IMG_A))


def test_different_pixels_different_hash():
    base = load_image(IMG_A)
    changed = base.copy()
    r, g, b = changed.getpixel((5, 5))
    changed.putpixel((5, 5), ((r + 1) % 256, g, b))
    assert content_hash(base) != content_hash(changed)
    # same bytes, other shape
    flat = np.zeros((2, 3, 3), dtype=np.uint8)
    assert content_hash(load_image(flat)) != content_hash(load_image(flat.reshape(3, 2, 3)))
    assert content_hash(base) != content_hash(load_image(IMG_B))


def test_repeated_image_reuses_its_preprocessing(proc):
    first = proc.preprocess_image(IMG_A)
    second = proc.preprocess_image(IMG_A.copy())
    assert first.content_hash == second.content_hash
    assert second.pixel_values is first.pixel_values


def test_processed_prompt_types(proc):
    out = proc.process_chat(ONE_IMAGE)
    assert isinstance(out, ProcessedPrompt) and isinstance(out.images[0], ImageInput)
    assert all(isinstance(t, int) for t in out.token_ids)
    assert out.mrope_positions.shape == (3, len(out.token_ids))
    assert isinstance(out.mrope_delta, int)
    assert isinstance(out.images[0].grid_thw, tuple) and len(out.images[0].content_hash) == 64
