"""``ptft finetune``: fine-tune a model directory on a task, fully or with a PEFT method.

    ptft finetune --model runs/bert --task cls --train train.tsv --eval dev.tsv --peft lora
    ptft finetune --model runs/bert --task cls --train stdlib-docstrings --eval stdlib-docstrings
    ptft finetune --model runs/gpt --task instruct --train records.jsonl --eval dev.jsonl --peft lora

Evaluates after every epoch and keeps the best epoch in ``OUT/best``: the adapter (trainable
weights incl. the task head, safetensors + adapter_config.json) with --peft, else the whole
model (HF format) plus the head; ``task.json`` records the task, labels and metrics.
``--task instruct`` reads prompt/response records: a GPT is trained on the templated prompt
followed by the response with the loss on the response tokens only, short records packed into
rows without attention across records (best epoch = lowest eval loss); T5/BART get the templated
prompt as the source and the response as the target (best epoch = ROUGE-L).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ptft_fast.finetune import defaults


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("finetune", help="fine-tune on a task (full or PEFT), best checkpoint kept")
    p.add_argument("--model", required=True, help="directory: config.json, model.safetensors, tokenizer.json")
    p.add_argument(
        "--init",
        default="pretrained",
        choices=("pretrained", "random"),
        help="random: the same architecture and tokenizer from random weights (the from-scratch baseline)",
    )
    p.add_argument("--task", required=True, choices=("cls", "reg", "tok", "qa", "seq2seq", "instruct"))
    p.add_argument(
        "--train", required=True, help="train file (.tsv/.csv/.jsonl, CoNLL, SQuAD JSON) or stdlib-docstrings"
    )
    p.add_argument("--eval", required=True, help="eval file, same format")
    p.add_argument("--peft", default="none", choices=("none", "lora", "adapter", "prefix", "prompt", "ia3"))
    p.add_argument("--out", default="finetuned", help="output folder (default: finetuned)")
    p.add_argument(
        "--text-column", default=None, help="default: detected (sentence, text, ... or the only one)"
    )
    p.add_argument("--text-pair-column", default=None, help="default: detected (sentence1/sentence2, ...)")
    p.add_argument("--label-column", default=None, help="default: detected (label, labels, class, ...)")
    p.add_argument("--labels", default=None, help="comma-separated label set (default: labels seen in train)")
    p.add_argument("--max-length", type=int, default=defaults.MAX_LENGTH)
    p.add_argument("--doc-stride", type=int, default=32, help="qa: overlap of context windows")
    p.add_argument("--max-answer-len", type=int, default=30, help="qa: longest answer in tokens")
    p.add_argument("--epochs", type=int, default=None, help="default: enough for >= 400 steps (3..100)")
    p.add_argument("--batch-size", type=int, default=None, help="default: from the number of examples")
    p.add_argument("--lr", type=float, default=None, help="default: from the model width (and PEFT or not)")
    p.add_argument("--lora-r", type=int, default=defaults.LORA_R)
    p.add_argument("--lora-alpha", type=float, default=defaults.LORA_ALPHA)
    p.add_argument("--lora-targets", default=None, help="comma-separated module names or a regex")
    p.add_argument("--num-virtual-tokens", type=int, default=10)
    p.add_argument(
        "--prompt-init-text", default=None, help="prompt tuning: initialise from this text's tokens"
    )
    p.add_argument("--adapter-placement", default="houlsby", choices=("houlsby", "pfeiffer"))
    p.add_argument("--adapter-size", type=int, default=64)
    p.add_argument("--prompt-column", default="prompt", help="instruct: prompt column")
    p.add_argument("--response-column", default="response", help="instruct: response column")
    p.add_argument("--template", default=None, help="instruct: prompt template with {prompt}")
    p.add_argument(
        "--no-pack", dest="pack", action="store_false", help="instruct: one record per row (no packing)"
    )
    p.add_argument(
        "--pooling",
        default=None,
        choices=("auto", "mean"),
        help="cls/reg: auto = [CLS]+pooler (BERT), last token (GPT-2), ...; mean = masked mean, no pooler "
        "(default: mean for BERT/RoBERTa, auto otherwise)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cpu-threads",
        type=int,
        default=0,
        help="intra-op threads; 0 = auto (1 for models < 20M parameters, as ptft pretrain)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
    return p


def _peft_config(args):
    from ptft_fast import peft

    if args.peft == "lora":
        cfg = peft.LoraConfig(r=args.lora_r, alpha=args.lora_alpha)
        if args.lora_targets:
            t = args.lora_targets
            cfg.target_modules = t if any(c in t for c in "*[(\\") else t.split(",")
        return cfg
    if args.peft == "adapter":
        return peft.AdapterConfig(placement=args.adapter_placement, bottleneck=args.adapter_size)
    if args.peft in ("prefix", "prompt"):
        return peft.CONFIGS[args.peft](num_virtual_tokens=args.num_virtual_tokens)
    return peft.IA3Config() if args.peft == "ia3" else None


def _generative_setup(args, config, model, tok, tr, ev):
    """seq2seq (T5/BART) and instruct (GPT: packed prompt/response records, loss on the response;
    T5/BART: templated prompt → response as seq2seq) → (model, train data, evaluate, loss_fn)."""
    from ptft_fast.finetune import instruct, tasks
    from ptft_fast.finetune.readers import Example

    template = args.template or instruct.TEMPLATE
    if "{prompt}" not in template:
        raise ValueError(f"--template must contain {{prompt}}, got {template!r}")
    if args.peft in ("prefix", "prompt"):
        raise ValueError(f"--task {args.task} supports --peft none|lora|adapter|ia3")
    if args.task == "seq2seq" and not config.is_encoder_decoder:
        raise ValueError(f"--task seq2seq needs an encoder-decoder model (T5/BART), got {config.arch}")
    if config.is_encoder_decoder:
        if args.task == "instruct":
            tr, ev = ([Example(template.format(prompt=e.text), None, e.label, e.where) for e in x]
                      for x in (tr, ev))  # fmt: skip
        train_data = tasks.seq2seq_data(tok, tr, args.max_length)
        eval_data = tasks.seq2seq_data(tok, ev, args.max_length)
        return model, train_data, lambda m: tasks.evaluate_seq2seq(m, tok, ev, eval_data), None
    if config.arch != "gpt2":
        raise ValueError(f"--task instruct needs a causal LM (GPT-2) or T5/BART, got {config.arch}")

    def rows(examples):
        recs = [instruct.encode_record(tok, e.text, str(e.label), template, args.max_length)
                for e in examples]  # fmt: skip
        groups = instruct.pack(recs, args.max_length) if args.pack else [[r] for r in recs]
        return instruct.packed_rows(groups, tok.pad_id or 0)

    train_data, eval_data = rows(tr), rows(ev)
    return model, train_data, lambda m: instruct.evaluate_instruct(m, eval_data), instruct.rows_loss


def run(args) -> int:
    import torch

    from ptft_fast import peft
    from ptft_fast.finetune import tasks
    from ptft_fast.finetune.heads import TaskModel
    from ptft_fast.finetune.loop import FinetuneConfig, train
    from ptft_fast.finetune.readers import Columns, detect_columns
    from ptft_fast.finetune.session import EMBEDDED, load_model_dir, load_task_data, write_task_card
    from ptft_fast.train.trainer import set_cpu_threads

    torch.manual_seed(args.seed)
    labels = args.labels.split(",") if args.labels else None
    cols = Columns(args.prompt_column, None, args.response_column)
    if args.task in ("cls", "reg", "seq2seq") and EMBEDDED not in (args.train, args.eval):
        cols, detected = detect_columns(
            args.train, args.text_column, args.text_pair_column, args.label_column
        )
        if detected:
            print(f"{args.train}: {', '.join(detected)} (detected; --text-column/--label-column to choose)")
    tr, ev, names = load_task_data(args.task, args.train, args.eval, cols, labels)
    backbone, config, tok = load_model_dir(args.model, init=args.init, seed=args.seed)
    if args.pooling is None:
        args.pooling = defaults.default_pooling(config.arch)
        if args.task in ("cls", "reg"):
            print(f"pooling: {args.pooling} (the default for {config.arch}; --pooling to choose)")
    set_cpu_threads(args.cpu_threads, backbone, torch.device("cpu"))
    if args.init == "random":
        print(f"--init random: {config.arch} of {args.model}'s shape and tokenizer, weights drawn afresh")
    loss_fn, higher = None, True
    if args.task in ("seq2seq", "instruct"):
        model, train_data, evaluate, loss_fn = _generative_setup(args, config, backbone, tok, tr, ev)
        higher = not (args.task == "instruct" and not config.is_encoder_decoder)
        if args.peft != "none":
            peft.get_peft_model(model, args.peft, _peft_config(args))
    else:
        pcfg = _peft_config(args)
        if args.peft in ("prefix", "prompt"):  # wrap the backbone, the head stays outside
            init = tok.encode(args.prompt_init_text) if args.prompt_init_text else None
            backbone = peft.get_peft_model(backbone, args.peft, pcfg, init_ids=init)
            if args.peft == "prompt":
                backbone.strip_outputs = True
        model = TaskModel(backbone, args.task, len(names) if names else 1, pooling=args.pooling)
        if args.peft in ("lora", "adapter", "ia3"):
            peft.get_peft_model(model, args.peft, pcfg)
        elif args.peft != "none":
            peft.mark_trainable(model)
        if args.task == "cls":
            train_data, eval_data = (
                tasks.cls_data(tok, tr, names, args.max_length),
                tasks.cls_data(tok, ev, names, args.max_length),
            )
            evaluate = lambda m: tasks.evaluate_cls(m, eval_data)  # noqa: E731
        elif args.task == "reg":
            train_data, eval_data = (
                tasks.reg_data(tok, tr, args.max_length),
                tasks.reg_data(tok, ev, args.max_length),
            )
            evaluate = lambda m: tasks.evaluate_reg(m, eval_data)  # noqa: E731
        elif args.task == "tok":
            train_data, eval_data = (
                tasks.tok_data(tok, tr, names, args.max_length),
                tasks.tok_data(tok, ev, names, args.max_length),
            )
            evaluate = lambda m: tasks.evaluate_tok(m, eval_data)  # noqa: E731
        else:
            train_data = tasks.QAData(tok, tr, args.max_length, args.doc_stride).tensors
            qa_eval = tasks.QAData(tok, ev, args.max_length, args.doc_stride)
            evaluate = lambda m: tasks.evaluate_qa(m, qa_eval, max_answer_len=args.max_answer_len)  # noqa: E731
    print(peft.param_report(model))
    out = Path(args.out)
    metric = tasks.PRIMARY[args.task] if higher else "loss"

    def on_best(m, row):
        best = out / "best"
        if args.peft == "none":
            from safetensors.torch import save_file

            from ptft_fast.hf import save_pretrained

            save_pretrained(m.backbone if hasattr(m, "head") else m, best)
            if hasattr(m, "head"):
                save_file(
                    {k: v.contiguous() for k, v in m.head.state_dict().items()},
                    str(best / "head.safetensors"),
                )
        else:
            peft.save_adapter(m, best, {"peft_type": args.peft, **(vars(_peft_config(args)) or {})})
        tok.save(best)
        write_task_card(
            best,
            task=args.task,
            labels=names,
            peft=args.peft,
            pooling=args.pooling,
            metrics=row,
            base_model=str(args.model),
            init=args.init,
        )

    recipe = defaults.choose_recipe(
        config.hidden_size,
        len(tr),
        peft=args.peft,
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
    )
    print(recipe.describe(config.hidden_size, len(tr)))
    cfg = FinetuneConfig(
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        seed=args.seed,
        progress=not args.no_progress,
    )
    hist = train(
        model,
        train_data,
        evaluate,
        cfg,
        metric=metric,
        higher_is_better=higher,
        on_best=on_best,
        loss_fn=loss_fn,
    )
    for row in hist.epochs:
        print("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    print(f"best epoch {hist.best['epoch']}: {metric}={hist.best[metric]:.4f} → {out / 'best'}")
    return 0
