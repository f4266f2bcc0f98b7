"""Train the SynthVQA model pair: two tiny Qwen3-VL checkpoints in the Hugging Face layout.

    python -m baton.engine.synthvqa_train --out models/trained            # both, full settings
    python -m baton.engine.synthvqa_train --model small --steps 20 --out /tmp/x   # a smoke run

Training is transformers' own Qwen3-VL forward with labels (loss on the target tokens only),
AdamW, seeded. Prompts are built by the multi-agent layer's PromptBuilder on Baton's
processor, so each model learns exactly the token sequences the engine will show it:

    small: brief  -> answer;  reason -> reasoning + end of thought;  reasoned -> answer
    large: the same, plus transfer (brief prompt + <think> + selected reasoning + </think>) -> answer,
           where the selected reasoning is all of it, a prefix, or an ordered subset
           (what the truncate / entropy / attention selectors send).

The result directory holds config.json, model.safetensors (float16), tokenizer and
preprocessor files, plus loss_curve.png and train_log.json.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch

from baton.models import synthvqa_task as task

SPECS: dict[str, dict] = {
    "small": {
        "text_config": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
                        "max_position_embeddings": 2048},
        "vision_config": {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2,
                          "num_position_embeddings": 64, "deepstack_visual_indexes": [0, 1]},
        "tie_word_embeddings": True,
    },
    "large": {  # ~3.4x the small's parameters (a wider vision tower costs little at 16 patches)
        "text_config": {"hidden_size": 192, "intermediate_size": 576, "num_hidden_layers": 6,
                        "num_attention_heads": 6, "num_key_value_heads": 3, "head_dim": 32,
                        "max_position_embeddings": 2048},
        "vision_config": {"depth": 4, "hidden_size": 128, "intermediate_size": 512, "num_heads": 4,
                          "num_position_embeddings": 64, "deepstack_visual_indexes": [1, 3]},
        "tie_word_embeddings": True,
    },
}
# format -> share of the batches (each batch holds one format: similar lengths, little padding).
# "reasoned" (the answer after the full reasoning) is easy: the reasoning ends "So <answer>."
MIXES = {"small": {"brief": 0.4, "reason": 0.45, "reasoned": 0.15},
         "large": {"brief": 0.35, "reason": 0.2, "reasoned": 0.05, "transfer": 0.4}}
DEFAULTS = {"small": {"steps": 500, "lr": 3e-3}, "large": {"steps": 300, "lr": 2e-3}}
STORAGE_DTYPE = torch.float16


def init_checkpoint(out: Path, size: str, seed: int) -> Path:
    """Random-weight start: the synthetic builder writes the HF layout, tokenizer included."""
    from baton.models.synthetic import build_synthetic_checkpoint

    pixels = task.IMAGE_SIZE * task.IMAGE_SIZE
    return build_synthetic_checkpoint(out, SPECS[size], seed=seed, min_pixels=pixels, max_pixels=pixels)


class Examples:
    """Token sequences (ids, labels, image) in the engine's own prompt layout."""

    def __init__(self, checkpoint: Path):
        from baton.engine.agent_prompts import AgentPrompts, PromptBuilder
        from baton.models.processor import Processor

        self.processor = Processor(checkpoint)
        self.prompts = AgentPrompts()
        self.builder = PromptBuilder(self.processor, self.prompts)
        self.eos = self.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.think_end = self.processor.tokenizer.convert_tokens_to_ids(self.prompts.think_close.strip())

    def _seq(self, prompt: list[int], target: list[int], image):
        return prompt + target, [-100] * len(prompt) + target, image

    def sequence(self, item: task.Item, fmt: str, rng: random.Random) -> tuple:
        b, msgs = self.builder, item.messages()
        answer = b.encode_text(item.answer) + [self.eos]
        reasoning = b.encode_text(item.reasoning)
        if fmt == "brief":
            ids, images = b.brief(msgs)
            return self._seq(ids, answer, images[0])
        if fmt == "reason":
            # the reasoning stage stops at the end-of-thought marker, emitted right after the
            # reasoning: the engine cuts the stop string and keeps every token before it
            ids, images = b.reason(msgs)
            return self._seq(ids, reasoning + [self.think_end], images[0])
        if fmt == "reasoned":  # the answer stage: reasoning + the full think_close (after_reasoning)
            ids, images = b.reason(msgs)
            return self._seq(b.after_reasoning(ids, reasoning), answer, images[0])
        if fmt == "transfer":
            ids, images = b.brief(msgs)
            return self._seq(b.transfer(ids, select_for_training(reasoning, rng)), answer, images[0])
        raise ValueError(f"unknown format {fmt!r}")


def select_for_training(reasoning: list[int], rng: random.Random) -> list[int]:
    """All of the reasoning, a prefix, or an ordered random subset, at a random budget."""
    n = len(reasoning)
    kind = rng.random()
    if kind < 0.35 or n == 0:
        return list(reasoning)
    k = max(1, round(rng.choice([0.25, 0.5, 0.75, rng.random()]) * n))
    if kind < 0.65:
        return reasoning[:k]
    return [reasoning[i] for i in sorted(rng.sample(range(n), k))]


def collate(batch: list[tuple], processor, pad_id: int) -> dict:
    width = max(len(ids) for ids, _, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    pixels, grids = [], []
    for row, (ids, labs, image) in enumerate(batch):
        processed = processor.process_ids(ids, [image])
        n = len(processed.token_ids)
        input_ids[row, :n] = torch.tensor(processed.token_ids)
        labels[row, :n] = torch.tensor(_expand_labels(labs, ids, processed.token_ids, processor.image_token_id))
        mask[row, :n] = 1
        pixels.append(processed.images[0].pixel_values)
        grids.append(list(processed.images[0].grid_thw))
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels,
            "pixel_values": torch.cat(pixels), "image_grid_thw": torch.tensor(grids),
            "mm_token_type_ids": (input_ids == processor.image_token_id).long()}


def _expand_labels(labels: list[int], ids: list[int], expanded: list[int], image_token_id: int) -> list[int]:
    """Labels for the prompt after each image placeholder became its run of pad tokens."""
    extra = len(expanded) - len(ids)
    at = ids.index(image_token_id)
    assert labels[at] == -100, "an image placeholder must lie in the prompt"
    return labels[:at] + [-100] * extra + labels[at:]


def train(size: str, out: str | Path, *, steps: int | None = None, batch_size: int = 16, lr: float | None = None,
          seed: int = 0, threads: int | None = None, progress: bool = True, resume: str | Path | None = None,
          mix: dict[str, float] | None = None) -> dict:
    """Train one model of the pair into `out`; returns the training log (losses per step).
    resume: start from that trained checkpoint of the same size instead of random weights
    (its log's losses are kept in front of this run's).
    mix: format -> share of the batches, replacing MIXES[size] (e.g. more reasoning batches)."""
    from tqdm import tqdm
    from transformers import Qwen3VLForConditionalGeneration

    if size not in SPECS:
        raise ValueError(f"model must be one of {tuple(SPECS)}, got {size!r}")
    if mix is not None:
        unknown = set(mix) - set(MIXES[size])
        if unknown or not mix or min(mix.values()) < 0 or sum(mix.values()) <= 0:
            raise ValueError(f"mix for {size} takes non-negative shares of {sorted(MIXES[size])}, got {mix}")
    steps = steps or DEFAULTS[size]["steps"]
    lr = lr or DEFAULTS[size]["lr"]
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    out = Path(out)
    work = Path(tempfile.mkdtemp(prefix=f"synthvqa-{size}-"))
    try:
        init = init_checkpoint(work / "init", size, seed) if resume is None else Path(resume)
        examples = Examples(init)
        model = Qwen3VLForConditionalGeneration.from_pretrained(str(init), dtype=torch.float32)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
        warmup = max(1, steps // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
        mix = dict(mix or MIXES[size])
        formats, weights = zip(*mix.items())
        pad_id = examples.processor.pad_token_id or 0
        log = {"model": size, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "mix": mix,
               "loss": [], "format": []}
        if resume is not None:
            before = json.loads((Path(resume) / "train_log.json").read_text())
            log["resumed"] = {k: v for k, v in before.items() if k != "loss"}
            log["loss_before"] = before.get("loss_before", []) + before["loss"]
            log["format_before"] = before.get("format_before", []) + before.get("format", [None] * len(before["loss"]))
        item_stream = _items(seed + 7919 * len(log.get("loss_before", [])))  # a resumed run sees new items
        t0 = time.perf_counter()
        bar = tqdm(range(steps), desc=f"train {size}", disable=not progress, mininterval=2.0)
        for _ in bar:
            fmt = rng.choices(formats, weights)[0]
            batch = [examples.sequence(next(item_stream), fmt, rng) for _ in range(batch_size)]
            inputs = collate(batch, examples.processor, pad_id)
            loss = model(**inputs).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            log["loss"].append(round(loss.item(), 5))
            log["format"].append(fmt)
            bar.set_postfix(loss=f"{sum(log['loss'][-20:]) / len(log['loss'][-20:]):.3f}")
        log["seconds"] = round(time.perf_counter() - t0, 1)
        model.float()
        save(model, init, out)
        (out / "train_log.json").write_text(json.dumps(log) + "\n")
        plot_loss(log, out / "loss_curve.png")
        return log
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _items(seed: int):
    """An endless stream of train-split items."""
    chunk = 0
    while True:
        yield from task.generate("train", 512, seed=seed * 100_003 + chunk)
        chunk += 1


def save(model, init: Path, out: Path) -> None:
    """Weights as float16 safetensors under the names save_pretrained uses, beside the start
    checkpoint's config (dtype updated), tokenizer and preprocessor files."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    for f in init.iterdir():
        if f.suffix != ".safetensors" and f.is_file() and f.resolve() != (out / f.name).resolve():
            shutil.copy2(f, out / f.name)
    config = json.loads((init / "config.json").read_text())
    name = str(STORAGE_DTYPE).removeprefix("torch.")
    config["dtype"] = config["text_config"]["dtype"] = name
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tied = config["tie_word_embeddings"]
    tensors = {k: v.detach().to(STORAGE_DTYPE).contiguous()
               for k, v in model.named_parameters() if not (tied and k == "lm_head.weight")}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


def plot_loss(log: dict, path: Path) -> None:
    """Loss per step (all formats, faint) and a running mean per format where recorded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = log.get("loss_before", []) + log["loss"]
    formats = log.get("format_before", []) + log.get("format", [])
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot(loss, alpha=0.25, color="gray", label="per step")
    for fmt in sorted({f for f in formats if f}):
        steps = [i for i, f in enumerate(formats) if f == fmt]
        vals = [loss[i] for i in steps]
        window = max(1, len(vals) // 25)
        smooth = [sum(vals[max(0, j - window + 1):j + 1]) / len(vals[max(0, j - window + 1):j + 1])
                  for j in range(len(vals))]
        ax.plot(steps, smooth, label=f"{fmt} (mean of {window})")
    if log.get("loss_before"):
        ax.axvline(len(log["loss_before"]), color="k", lw=0.8, ls=":", label="resumed")
    ax.set(xlabel="step", ylabel="loss (target tokens)", yscale="log",
           title=f"SynthVQA {log['model']}: {len(loss)} steps, batch {log['batch_size']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _parse_mix(text: str) -> dict[str, float]:
    try:
        return {k.strip(): float(v) for k, v in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mix takes format=share pairs separated by commas, got {text!r}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="train the SynthVQA small / large Qwen3-VL pair")
    parser.add_argument("--model", choices=["small", "large", "both"], default="both")
    parser.add_argument("--out", default="models/trained", help="writes <out>/synthvqa-<model>")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", default=None, help="continue from this trained checkpoint (one --model)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on a busy CPU)")
    parser.add_argument("--mix", default=None, type=_parse_mix,
                        help="batch shares per format, e.g. brief=0.25,reason=0.35,reasoned=0.1,transfer=0.3")
    args = parser.parse_args(argv)
    for size in (["small", "large"] if args.model == "both" else [args.model]):
        log = train(size, Path(args.out) / f"synthvqa-{size}", steps=args.steps, batch_size=args.batch_size,
                    lr=args.lr, seed=args.seed, threads=args.threads, resume=args.resume, mix=args.mix)
        print(f"{size}: {log['steps']} steps in {log['seconds']} s, final loss "
              f"{sum(log['loss'][-20:]) / len(log['loss'][-20:]):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
