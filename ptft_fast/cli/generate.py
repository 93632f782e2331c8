"""``ptft generate``: generate text from a decoder (GPT) or encoder-decoder (T5/BART) directory.

One prompt streams its tokens to the console; several prompts are batched (left padding) and
printed when done.
"""

from __future__ import annotations

import argparse

from ptft_fast.cli.errors import UsageError, float_in, input_path, int_at_least
from ptft_fast.cli.help import MODEL_FOLDER

DESCRIPTION = """Generate text with a KV cache from a GPT-2 (decoder) or T5/BART (encoder-decoder) model folder:
greedy by default, sampling with --temperature/--top-k/--top-p, beam search with --beams. One prompt
streams its tokens as they come; several prompts (--prompt repeated) are batched."""

EXAMPLES = """examples:
  ptft generate --model runs/gpt/final --prompt "def read(" --max-new-tokens 64
  ptft generate --model runs/gpt/final --prompt "import os" --top-p 0.9 --temperature 0.8 --seed 0
  ptft generate --model runs/t5/final --prompt "open a file" --prompt "close it" --beams 4
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate",
        help="generate text with a KV cache (greedy, sampling, beam search)",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    p.add_argument("--model", required=True, help=MODEL_FOLDER)
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch)")
    p.add_argument("--max-new-tokens", type=int_at_least(1), default=32, help="tokens to generate at most")
    p.add_argument(
        "--sample",
        action="store_true",
        help="sample instead of greedy (implied by --temperature/--top-k/--top-p)",
    )
    p.add_argument(
        "--temperature",
        type=float_in(0.0),
        default=None,
        help="sampling temperature; 0 = greedy decoding (default: greedy, or 1.0 when sampling)",
    )
    p.add_argument(
        "--top-k", type=int_at_least(0), default=0, help="sample from the k likeliest tokens; 0 = all"
    )
    p.add_argument(
        "--top-p", type=float_in(0.0, 1.0, low_open=True), default=1.0, help="nucleus sampling mass; 1 = all"
    )
    p.add_argument("--beams", type=int_at_least(1), default=1, help="beam search width; 1 = no beam search")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam search: exponent of the length")
    p.add_argument(
        "--repetition-penalty",
        type=float_in(0.0, low_open=True),
        default=1.0,
        help="penalize tokens already in the text by this factor (CTRL); 1 = off",
    )
    p.add_argument(
        "--stop", action="append", default=[], help="stop sequence text (repeatable; default: none)"
    )
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: unseeded)")
    p.add_argument("--no-cache", action="store_true", help="re-run the whole sequence every step")
    p.add_argument("--no-stream", action="store_true", help="print a single prompt's text when done")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ptft_fast.generate import GenerationConfig, TextStreamer, generate, left_pad

    sample = validate(args)
    model, config, tok = load_generative_model(args.model, "generate needs")
    eos = tok.eos_id if tok.eos_id is not None else tok.sep_id
    pad = tok.pad_id if tok.pad_id is not None else 0
    cfg = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        do_sample=sample,
        temperature=args.temperature if sample and args.temperature else 1.0,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        num_beams=args.beams,
        length_penalty=args.length_penalty,
        eos_token_id=eos,
        pad_token_id=pad,
        stop_sequences=[tok.encode(s) for s in args.stop],
        seed=args.seed,
    )
    encoded = [tok.encode(p, add_special_tokens=config.is_encoder_decoder) or [pad] for p in args.prompt]
    check_length(args, config, max(len(e) for e in encoded))
    ids, mask = left_pad(encoded, pad)
    stream = len(args.prompt) == 1 and args.beams == 1 and not args.no_stream
    streamer = TextStreamer(tok.decode, stop_ids=[eos] if eos is not None else ()) if stream else None
    if stream:
        print(args.prompt[0], end="", flush=True)
    try:
        out = generate(model, ids, mask, cfg, use_cache=not args.no_cache, streamer=streamer)
    except BaseException:
        if stream:
            print(flush=True)  # an error message never continues the echoed prompt's line
        raise
    if not stream:
        for prompt, row in zip(args.prompt, out.tolist()):
            row = row[: row.index(eos) if eos in row else len(row)]
            print(f"{prompt}{tok.decode(row)}")
    return 0


def load_generative_model(path: str, needs: str):
    """(model, config, tokenizer) of ``--model`` for generation (dropout off); a masked-LM encoder
    is a UsageError ("<needs> a decoder ... or an encoder-decoder")."""
    from ptft_fast.finetune.session import load_model_dir

    model, config, tok = load_model_dir(input_path("--model", path, kind="folder"), dropout=0.0,
                                        attention_dropout=0.0)  # fmt: skip
    if not (config.is_encoder_decoder or config.arch == "gpt2"):
        raise UsageError(
            f"--model {path} is a {config.arch} encoder (masked LM): {needs} a decoder (GPT-2) "
            "or an encoder-decoder (T5, BART)"
        )
    return model, config, tok


def validate(args) -> bool:
    """Option rules checked before the model is loaded; returns whether to sample. ``--temperature
    0`` is greedy decoding (the limit of sampling as the temperature goes to 0)."""
    sampling_options = args.top_k > 0 or args.top_p < 1.0
    if args.temperature == 0:
        if args.sample or sampling_options:
            raise UsageError("--temperature 0 means greedy decoding; it contradicts --sample/--top-k/--top-p")
        sample = False
    else:
        sample = args.sample or args.temperature is not None or sampling_options
    if sample and args.beams > 1:
        raise UsageError(f"--beams {args.beams} (beam search) cannot be combined with sampling")
    return sample


def check_length(args, config, prompt_tokens: int) -> None:
    """The longest prompt plus --max-new-tokens fits the model's learned positions (checked before
    generating, so nothing generated is lost to a late error)."""
    if config.arch == "t5":  # relative positions: no limit
        return
    limit = config.max_position_embeddings - (2 if config.arch == "roberta" else 0)
    need = args.max_new_tokens + (0 if config.is_encoder_decoder else prompt_tokens)
    if need > limit or prompt_tokens > limit:
        raise UsageError(
            f"--max-new-tokens {args.max_new_tokens} with a {prompt_tokens}-token prompt exceeds the "
            f"model's {limit} positions"
        )
