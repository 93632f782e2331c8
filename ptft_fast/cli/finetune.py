"""``ptft finetune``: fine-tune a model directory on a task, fully or with a PEFT method.

Evaluates on a validation (dev) split after every epoch and keeps the best epoch in ``OUT/best``:
the adapter (trainable weights incl. the task head, safetensors + adapter_config.json) with
--peft, else the whole model (HF format) plus the head; ``task.json`` records the task, labels,
the dev scores that chose the epoch and the --eval scores of the kept model. The dev split is
``--dev FILE`` or a seeded share of ``--train`` (``--dev-fraction``); the ``--eval`` file is scored
once, after training, on the kept model, and never chooses anything.
``--task instruct`` reads prompt/response records: a GPT is trained on the templated prompt
followed by the response with the loss on the response tokens only, short records packed into
rows without attention across records (best epoch = lowest dev loss); T5/BART get the templated
prompt as the source and the response as the target (best epoch = ROUGE-L).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ptft_fast.cli import finetune_options
from ptft_fast.cli.errors import (
    UsageError,
    float_in,
    input_path,
    int_at_least,
    output_folder,
    removed_on_error,
)
from ptft_fast.cli.help import MODEL_FOLDER
from ptft_fast.finetune import defaults

DESCRIPTION = """Fine-tune a model folder (config.json, model.safetensors, tokenizer.json; e.g. the final/ folder of
ptft pretrain) on a labeled task, all weights or a PEFT method. The epoch kept in OUT/best is chosen
on a dev split (--dev FILE, or --dev-fraction of --train); --eval is scored once, on the kept model,
and the report gives both scores, labelled."""

EXAMPLES = """examples:
  ptft finetune --model runs/bert-tiny/final --task cls --train train.tsv --eval test.tsv
  ptft finetune --model runs/bert-tiny/final --task cls --train train.parquet --dev dev.parquet --eval test.parquet --peft lora --max-steps 2000 --eval-every 100 --early-stopping-patience 5 --report-to tensorboard
  ptft finetune --model runs/bert-tiny/final --task cls --train stdlib-docstrings --eval stdlib-docstrings
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ptft_fast.finetune.selection import DEFAULT_DEV_FRACTION

    p = subparsers.add_parser(
        "finetune",
        help="fine-tune on a task (full or PEFT), the epoch chosen on a dev split",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    p.add_argument("--model", required=True, help=MODEL_FOLDER)
    p.add_argument(
        "--init",
        default="pretrained",
        choices=("pretrained", "random"),
        help="random: the same architecture and tokenizer from random weights (the from-scratch baseline)",
    )
    p.add_argument(
        "--task",
        default=None,
        choices=("cls", "reg", "tok", "qa", "seq2seq", "instruct"),
        help="classification, regression, token tagging (CoNLL), extractive QA (SQuAD), seq2seq, instruct "
        "(default: none; required unless --glue sets it)",
    )
    p.add_argument(
        "--train",
        required=True,
        help="training file (.tsv/.csv/.jsonl, .parquet/.arrow or a datasets save_to_disk folder, CoNLL, "
        "SQuAD JSON) or stdlib-docstrings (embedded task)",
    )
    p.add_argument(
        "--dev",
        default=None,
        help="validation file that chooses the kept epoch, same format (default: --dev-fraction of --train)",
    )
    p.add_argument(
        "--dev-fraction",
        type=float_in(0.0, 1.0, low_open=True),
        default=DEFAULT_DEV_FRACTION,
        help="without --dev: share of --train held out (seeded by --seed) to choose the kept epoch",
    )
    p.add_argument(
        "--eval",
        required=True,
        help="test file, same format: scored once on the kept model, never used to choose it",
    )
    p.add_argument(
        "--peft",
        default="none",
        choices=("none", "lora", "adapter", "prefix", "prompt", "ia3"),
        help="parameter-efficient method; none = train all weights",
    )
    p.add_argument("--out", default="finetuned", help="output folder; the kept model goes to OUT/best")
    c = p.add_argument_group("columns and labels")
    c.add_argument(
        "--text-column",
        default=None,
        help="text column of .tsv/.csv/.jsonl files (default: detected: sentence, text, ... or the only one)",
    )
    c.add_argument(
        "--text-pair-column",
        default=None,
        help="second text column (default: detected: sentence1/sentence2, question/passage, ...)",
    )
    c.add_argument("--label-column", default=None, help="label column (default: detected: label, class, ...)")
    c.add_argument(
        "--labels", default=None, help="comma-separated label set (default: labels seen in --train)"
    )
    c.add_argument("--prompt-column", default="prompt", help="instruct: prompt column")
    c.add_argument("--response-column", default="response", help="instruct: response column")
    t = p.add_argument_group("training")
    t.add_argument(
        "--max-length",
        type=int_at_least(4),
        default=defaults.MAX_LENGTH,
        help="tokens per example (longer: cut)",
    )
    t.add_argument(
        "--epochs",
        type=int_at_least(1),
        default=None,
        help="passes over the training examples (default: enough for >= 400 optimizer steps, 3..100)",
    )
    t.add_argument(
        "--batch-size",
        type=int_at_least(1),
        default=None,
        help="examples per optimizer step (default: 8 below 200 examples, 16 below 5,000, else 32)",
    )
    t.add_argument(
        "--lr",
        type=float_in(0.0, low_open=True),
        default=None,
        help="peak learning rate (default: 1e-3 x (128/hidden size)^2 clipped to [1e-5, 2e-3]; x10 for PEFT)",
    )
    t.add_argument("--seed", type=int, default=0, help="seeds the head, the data order and the dev split")
    t.add_argument(
        "--pooling",
        default=None,
        choices=("auto", "mean", "scalar-mix"),
        help="cls/reg: auto = [CLS]+pooler (BERT), last token (GPT-2), ...; mean = masked mean, no pooler; "
        "scalar-mix (any head task) = ELMo's learned softmax-weighted mix of all layers (then the mean) "
        "(default: mean for BERT/RoBERTa, auto otherwise)",
    )
    t.add_argument(
        "--cpu-threads",
        type=int_at_least(0),
        default=0,
        help="intra-op threads; 0 = auto (1 for models < 20M parameters, as ptft pretrain)",
    )
    t.add_argument("--doc-stride", type=int_at_least(0), default=32, help="qa: overlap of context windows")
    t.add_argument("--max-answer-len", type=int_at_least(1), default=30, help="qa: longest answer in tokens")
    t.add_argument(
        "--template",
        default=None,
        help="instruct: prompt template with {prompt} (default: ### Instruction: ...)",
    )
    t.add_argument(
        "--no-pack", dest="pack", action="store_false", help="instruct: one record per row (no packing)"
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    e = p.add_argument_group("PEFT settings")
    e.add_argument("--lora-r", type=int_at_least(1), default=defaults.LORA_R, help="lora: rank")
    e.add_argument(
        "--lora-alpha",
        type=float_in(0.0, low_open=True),
        default=defaults.LORA_ALPHA,
        help="lora: scale alpha/r",
    )
    e.add_argument(
        "--lora-targets",
        default=None,
        help="lora: comma-separated module names or a regex (default: the attention projections qkv,q,kv,out)",
    )
    e.add_argument("--num-virtual-tokens", type=int_at_least(1), default=10, help="prefix/prompt: length")
    e.add_argument(
        "--prompt-init-text",
        default=None,
        help="prompt: initialise from this text's tokens (default: random init)",
    )
    e.add_argument(
        "--adapter-placement", default="houlsby", choices=("houlsby", "pfeiffer"), help="adapter: where"
    )
    e.add_argument("--adapter-size", type=int_at_least(1), default=64, help="adapter: bottleneck width")
    finetune_options.add_options(p)
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


def _generative_setup(args, config, tok, tr):
    """seq2seq (T5/BART) and instruct (GPT: prompt/response records, loss on the response, packed
    into rows without attention across records unless prefix/prompt tuning wraps the model;
    T5/BART: templated prompt → response as seq2seq) → (train data, scorer, loss_fn);
    ``scorer(examples)`` is the evaluate callable of a split."""
    from ptft_fast.finetune import instruct, tasks
    from ptft_fast.finetune.readers import Example

    template = args.template or instruct.TEMPLATE
    if config.is_encoder_decoder:

        def templated(examples):
            if args.task != "instruct":
                return examples
            return [Example(template.format(prompt=e.text), None, e.label, e.where) for e in examples]

        def scorer(examples):
            examples = templated(examples)
            data = tasks.seq2seq_data(tok, examples, args.max_length)
            return lambda m: tasks.evaluate_seq2seq(m, tok, examples, data)

        return tasks.seq2seq_data(tok, templated(tr), args.max_length), scorer, None

    def records(examples):
        return [
            instruct.encode_record(tok, e.text, str(e.label), template, args.max_length) for e in examples
        ]

    if args.peft in ("prefix", "prompt"):  # the wrapper must see every row: one record per row

        def padded(examples):
            return instruct.padded_rows(records(examples), tok.pad_id or 0)

        def padded_scorer(examples):
            data = padded(examples)
            return lambda m: instruct.evaluate_padded(m, data)

        return padded(tr), padded_scorer, instruct.padded_loss

    def rows(examples):
        recs = records(examples)
        groups = instruct.pack(recs, args.max_length) if args.pack else [[r] for r in recs]
        return instruct.packed_rows(groups, tok.pad_id or 0)

    def scorer(examples):
        data = rows(examples)
        return lambda m: instruct.evaluate_instruct(m, data)

    return rows(tr), scorer, instruct.rows_loss


def _task_setup(args, names, tok, tr):
    """cls/reg/tok/qa → (train data, scorer): ``scorer(examples)`` is the evaluate callable of a split."""
    from ptft_fast.finetune import tasks

    if args.task == "qa":

        def qa_scorer(examples):
            qa = tasks.QAData(tok, examples, args.max_length, args.doc_stride)
            return lambda m: tasks.evaluate_qa(m, qa, max_answer_len=args.max_answer_len)

        return tasks.QAData(tok, tr, args.max_length, args.doc_stride).tensors, qa_scorer
    encode, evaluate = {
        "cls": (lambda exs: tasks.cls_data(tok, exs, names, args.max_length), tasks.evaluate_cls),
        "reg": (lambda exs: tasks.reg_data(tok, exs, args.max_length), tasks.evaluate_reg),
        "tok": (
            lambda exs: tasks.tok_data(tok, exs, names, args.max_length),
            lambda m, d: tasks.evaluate_tok(m, d, names),  # entity-level F1 for B-/I- tags
        ),
    }[args.task]

    def scorer(examples):
        data = encode(examples)
        return lambda m: evaluate(m, data)

    return encode(tr), scorer


def validate(args) -> None:
    """Options and files checked before anything is read at length or written (UsageError)."""
    from ptft_fast.data.hf_datasets import is_dataset
    from ptft_fast.finetune.session import EMBEDDED

    finetune_options.validate(args)  # first: --glue sets --task
    output_folder("--out", args.out)
    input_path("--model", args.model, kind="folder")
    for option, value in (("--train", args.train), ("--eval", args.eval), ("--dev", args.dev)):
        if value is not None and value != EMBEDDED and not is_dataset(value):  # datasets: a folder too
            input_path(option, value, kind="file")
    finetune_options.validate_loop(args)
    if args.pack is None:  # instruct packs its records unless --no-pack; other tasks only with --pack
        args.pack = args.task == "instruct"
    if args.dev == EMBEDDED or (args.dev is not None and args.train == EMBEDDED):
        raise UsageError(
            f"--dev {args.dev}: the embedded task's dev split is carved from its training split "
            "(--dev-fraction); give no --dev with --train stdlib-docstrings"
        )
    if args.labels is not None and not all(x.strip() for x in args.labels.split(",")):
        raise UsageError(f"--labels must be comma-separated label names, got {args.labels!r}")
    if args.task == "qa" and args.doc_stride >= args.max_length:
        raise UsageError(
            f"--doc-stride {args.doc_stride} must be smaller than --max-length {args.max_length}"
        )


def check_model_for_task(args, config) -> None:
    """The model's kind suits --task and its options (UsageError naming them)."""
    if args.pack and args.task in ("cls", "reg") and config.arch not in ("bert", "roberta"):
        raise UsageError(
            f"--pack runs on the encoder's varlen path (BERT/RoBERTa), but --model {args.model} is {config.arch}"
        )
    if args.task not in ("seq2seq", "instruct"):
        return
    if args.template is not None and "{prompt}" not in args.template:
        raise UsageError(f"--template must contain {{prompt}}, got {args.template!r}")
    if args.task == "seq2seq" and not config.is_encoder_decoder:
        raise UsageError(
            f"--task seq2seq needs an encoder-decoder model (T5/BART), but --model {args.model} is {config.arch}"
        )
    if not config.is_encoder_decoder and config.arch != "gpt2":
        raise UsageError(
            f"--task instruct needs a causal LM (GPT-2) or T5/BART, but --model {args.model} is {config.arch}"
        )


def check_max_length(max_length: int, config) -> None:
    """--max-length fits the model's positions (T5's relative positions have no limit)."""
    limit = (getattr(config, "max_position_embeddings", 0) or 0) - (2 if config.arch == "roberta" else 0)
    if config.arch != "t5" and limit > 0 and max_length > limit:
        raise UsageError(f"--max-length {max_length} exceeds the model's {limit} positions")


def run(args) -> int:
    validate(args)
    with removed_on_error(args.out):
        return _finetune(args)


def dev_split(args, tr, cols, names, labels):
    """(train, dev examples, how the dev split was made): the --dev file, read as the eval file is
    (against the training label set), or a seeded --dev-fraction of --train carved off before
    training."""
    from ptft_fast.finetune.selection import carve_dev
    from ptft_fast.finetune.session import load_task_data

    if args.dev is not None and args.glue:
        dev = finetune_options.glue_split(args, args.dev)
        return tr, dev, f"--dev {args.dev}, {len(dev)} examples"
    if args.dev is not None:
        dev = load_task_data(args.task, args.train, args.dev, cols, names or labels)[1]
        return tr, dev, f"--dev {args.dev}, {len(dev)} examples"
    tr, dev = carve_dev(tr, args.dev_fraction, args.seed)
    how = f"{args.dev_fraction:g} of --train ({len(dev)} examples, seed {args.seed}; {len(tr)} left to train on)"
    return tr, dev, how


def _task_spec(args, names, cols):
    """The TaskSpec of this run (what predict and merge rebuild the model from)."""
    from ptft_fast.finetune import instruct
    from ptft_fast.finetune.saved import TaskSpec

    pcfg = _peft_config(args)
    return TaskSpec(
        task=args.task,
        labels=names,
        peft=args.peft,
        peft_config=dict(vars(pcfg)) if pcfg is not None else {},
        pooling=args.pooling,
        freeze_backbone=args.freeze_backbone,
        max_length=args.max_length,
        template=(args.template or instruct.TEMPLATE) if args.task == "instruct" else None,
        glue=args.glue,
        text_column=cols.text,
        text_pair_column=cols.text_pair,
        doc_stride=args.doc_stride,
        max_answer_len=args.max_answer_len,
    )


def _when(args, row: dict) -> str:
    """``epoch 2`` (evaluated by epoch) or ``step 40 (epoch 2)``."""
    if args.eval_every or args.max_steps:
        return f"step {row['step']} (epoch {row['epoch']})"
    return f"epoch {row['epoch']}"


def _finetune(args) -> int:
    import torch

    from ptft_fast import peft
    from ptft_fast.finetune import saved, tasks
    from ptft_fast.finetune.loop import FinetuneConfig, train
    from ptft_fast.finetune.readers import Columns, detect_columns
    from ptft_fast.finetune.selection import scores_text
    from ptft_fast.finetune.session import EMBEDDED, load_model_dir, load_task_data
    from ptft_fast.train.trainer import set_cpu_threads

    torch.manual_seed(args.seed)
    labels = args.labels.split(",") if args.labels else None
    cols = Columns(args.prompt_column, None, args.response_column)
    if args.task != "instruct":
        cols = Columns(args.text_column or "sentence", args.text_pair_column, args.label_column or "label")
    if args.task in ("cls", "reg", "seq2seq") and not args.glue and EMBEDDED not in (args.train, args.eval):
        cols, detected = detect_columns(
            args.train, args.text_column, args.text_pair_column, args.label_column
        )
        if detected:
            print(f"{args.train}: {', '.join(detected)} (detected; --text-column/--label-column to choose)")
    mm = None
    if args.glue:
        tr, ev, names, mm, cols = finetune_options.glue_data(args)
    else:
        tr, ev, names = load_task_data(args.task, args.train, args.eval, cols, labels)
    backbone, config, tok = load_model_dir(args.model, init=args.init, seed=args.seed)
    if args.pooling is None:
        args.pooling = defaults.default_pooling(config.arch)
        if args.task in ("cls", "reg"):
            print(f"pooling: {args.pooling} (the default for {config.arch}; --pooling to choose)")
    set_cpu_threads(args.cpu_threads, backbone, torch.device("cpu"))
    if args.init == "random":
        print(f"--init random: {config.arch} of {args.model}'s shape and tokenizer, weights drawn afresh")
    check_max_length(args.max_length, config)
    check_model_for_task(args, config)
    tr, dev, dev_how = dev_split(args, tr, cols, names, labels)
    spec = _task_spec(args, names, cols)
    init = tok.encode(args.prompt_init_text) if args.prompt_init_text else None
    model = saved.build(backbone, spec, init_ids=init)
    loss_fn, higher = None, True
    if args.task in ("seq2seq", "instruct"):
        train_data, scorer, loss_fn = _generative_setup(args, config, tok, tr)
        higher = not (args.task == "instruct" and not config.is_encoder_decoder)
    else:
        train_data, scorer = _task_setup(args, names, tok, tr)
        if args.pack:
            from ptft_fast.finetune.packed import packed_loss

            loss_fn = packed_loss
            print(
                "--pack: each step's examples run packed end to end on the encoder's varlen path (no padding)"
            )
    if args.glue:

        def scorer(examples, mismatched=None):
            return finetune_options.glue_evaluate(args, tok, names, examples, mismatched)

    print(peft.param_report(model))
    print(f"dev split (chooses the kept epoch): {dev_how}")
    out = Path(args.out)
    metric = "score" if args.glue else (tasks.primary_metric(args.task, names) if higher else "loss")
    selected_on = f"dev: {dev_how}"

    def on_best(m, row):
        saved.save(
            m,
            out / "best",
            spec,
            tok,
            config,
            base_model=str(args.model),
            dev_metrics=row,
            selected_on=selected_on,
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
    if args.max_steps:
        print(f"--max-steps {args.max_steps}: training stops there (the lr schedule runs over those steps)")
    cfg = FinetuneConfig(
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        seed=args.seed,
        progress=not args.no_progress,
        **finetune_options.loop_settings(args),
    )
    # built before training: a bad --eval file fails before any work
    evaluate_eval = scorer(ev, mm) if args.glue else scorer(ev)
    hist = train(
        model,
        train_data,
        scorer(dev),
        cfg,
        metric=metric,
        higher_is_better=higher,
        on_best=on_best,
        loss_fn=loss_fn,
        restore_best=True,
    )
    model.eval()
    with torch.no_grad():  # every DeepSpeed rank scores (ZeRO-3: a forward gathers on all ranks)
        test = evaluate_eval(model)  # the kept model: restore_best put its weights back
    if torch.distributed.is_initialized():  # DeepSpeed ranks: rank 0 reports and writes
        torch.distributed.barrier()
        if torch.distributed.get_rank() != 0:
            torch.distributed.destroy_process_group()
            return 0
        torch.distributed.destroy_process_group()  # without it gloo ranks can hang at exit
    for row in hist.epochs:
        scores = {k: v for k, v in row.items() if k not in ("epoch", "step", "train_loss")}
        print(f"{_when(args, row)}: train_loss={row['train_loss']:.4f}  dev {scores_text(scores)}")
    best = hist.best
    saved.add_to_card(out / "best", eval_metrics=test, eval_file=str(args.eval))
    dev_scores = {k: v for k, v in best.items() if k not in ("epoch", "step", "train_loss")}
    kept = (
        f"kept epoch {best['epoch']} of {recipe.epochs}"
        if not (args.eval_every or args.max_steps)
        else (f"kept the model of step {best['step']} (epoch {best['epoch']})")
    )
    print(f"{kept}, chosen on dev {metric} → {out / 'best'}")
    print(f"  dev score (chose it):         {scores_text(dev_scores)}")
    print(
        f"  eval score of the kept model: {scores_text(test)}  ({args.eval}, {len(ev)} examples; not used to choose)"
    )
    base = finetune_options.report_baselines(args, args.task, tr, [s for s in (ev, mm) if s], names)
    if base:
        saved.add_to_card(out / "best", baselines=base)
    if args.merge_lora:
        saved.merge(out / "best", out / "merged")
        print(f"merged into a plain model folder → {out / 'merged'}")
    return 0
