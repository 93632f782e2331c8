"""Predictions of a fine-tuned model (``saved.load``) for a file without labels, and the files they
are written to.

Per task: class labels (cls), numbers (reg), one tag per word (tok, CoNLL words in), answer spans
(qa, SQuAD JSON in), generated text (seq2seq; instruct: the continuation of the templated
prompt). Outputs: ``index<TAB>prediction`` TSV (cls/reg; the index is the file's ``index``/``id``/
``idx`` column, else the row number), CoNLL ``word<TAB>tag`` (tok), ``{id: answer}`` JSON (qa,
SQuAD's prediction format), JSONL ``{"index", "prediction"}`` (generation). A GLUE preset's model
writes the task's submission file into a folder instead (``ptft_fast.finetune.glue``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ptft_fast.finetune import glue, tasks
from ptft_fast.finetune.readers import Columns, Example, column_values, read_conll, read_examples, read_squad
from ptft_fast.finetune.saved import Finetuned

STSB_RANGE = (0.0, 5.0)  # STS-B similarity scores


@dataclass
class Predictions:
    index: list[str]  # one id per example
    values: list  # label names, numbers, tag lists, answers or generated texts


def read_inputs(f: Finetuned, path: str | Path) -> tuple[list, list[str]]:
    """(examples, ids) of a file to predict on, read the way the model's task reads files (labels,
    if present, are ignored)."""
    spec = f.spec
    if spec.task == "tok":
        examples = read_conll(path, with_tags=False)
        return examples, [str(i) for i in range(len(examples))]
    if spec.task == "qa":
        examples = read_squad(path)
        return examples, [e.id for e in examples]
    fieldnames = None
    if spec.glue is not None:
        preset = glue.TASKS[spec.glue]
        examples = glue.read(preset, path)
        fieldnames = glue.layout(preset, path)[1]
    else:
        examples = read_examples(path, Columns(spec.text_column, spec.text_pair_column))
    ids = column_values(path, glue.INDEX_COLUMNS, fieldnames) if Path(path).suffix != ".json" else None
    unlabeled = [Example(e.text, e.text_pair, None, e.where) for e in examples]
    return unlabeled, ids or [str(i) for i in range(len(examples))]


@torch.no_grad()
def predict(f: Finetuned, examples: list, *, batch_size: int = 32, max_new_tokens: int = 64) -> list:
    """The model's prediction for every example (see the module docstring)."""
    spec, tok, model = f.spec, f.tokenizer, f.model
    model.eval()
    if spec.task == "cls":
        data = tasks.cls_data(tok, examples, spec.labels, spec.max_length)
        return [spec.labels[i] for i in tasks.predict_cls(model, data, batch_size)]
    if spec.task == "reg":
        values = tasks.predict_reg(model, tasks.reg_data(tok, examples, spec.max_length), batch_size)
        if spec.glue == "stsb":
            values = [min(max(v, STSB_RANGE[0]), STSB_RANGE[1]) for v in values]
        return values
    if spec.task == "tok":
        data = tasks.tok_data(tok, examples, ["O"], spec.max_length)  # labels only mark first sub-words
        rows = tasks.predict_tok(model, data, batch_size)
        # words cut by truncation get no prediction: tagged "O"
        return [[spec.labels[i] for i in r] + ["O"] * (len(e.words) - len(r)) for r, e in zip(rows, examples)]
    if spec.task == "qa":
        qa = tasks.QAData(tok, examples, spec.max_length, spec.doc_stride)
        return tasks.predict_qa(model, qa, batch_size, max_answer_len=spec.max_answer_len)
    texts = [spec.template.format(prompt=e.text) if spec.template else e.text for e in examples]
    if f.config.is_encoder_decoder:
        src = tok(texts, truncation=True, max_length=spec.max_length, padding=True)
        data = {"input_ids": src["input_ids"], "attention_mask": src["attention_mask"]}
        return tasks.predict_seq2seq(model, tok, data, batch_size, max_new_tokens)
    return _continue(f, texts, batch_size, max_new_tokens)


def _continue(f: Finetuned, prompts: list[str], batch_size: int, max_new_tokens: int) -> list[str]:
    """A decoder's greedy continuation of each prompt (left-padded batches), up to eos."""
    from ptft_fast.generate import GenerationConfig, generate, left_pad

    tok = f.tokenizer
    pad = tok.pad_id if tok.pad_id is not None else 0
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=tok.eos_id, pad_token_id=pad)
    out = []
    for i in range(0, len(prompts), batch_size):
        encoded = [tok.encode(p)[-(f.spec.max_length) :] or [pad] for p in prompts[i : i + batch_size]]
        ids, mask = left_pad(encoded, pad)
        new = generate(f.model, ids, mask, cfg)
        out += [tok.decode(row.tolist()) for row in new]
    return out


def write(f: Finetuned, preds: Predictions, out: str | Path, input_path: str | Path, examples: list) -> Path:
    """Write ``preds`` (see the module docstring); returns the file written."""
    spec, out = f.spec, Path(out)
    if spec.glue is not None:
        name = glue.submission_name(glue.TASKS[spec.glue], input_path)
        return glue.write_submission(out, name, preds.index, preds.values)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        if spec.task in ("cls", "reg"):
            fh.write("index\tprediction\n")
            fh.writelines(f"{i}\t{v}\n" for i, v in zip(preds.index, preds.values))
        elif spec.task == "tok":
            for e, tags in zip(examples, preds.values):
                fh.writelines(f"{w}\t{t}\n" for w, t in zip(e.words, tags))
                fh.write("\n")
        elif spec.task == "qa":
            json.dump(dict(zip(preds.index, preds.values)), fh, indent=1, ensure_ascii=False)
        else:
            fh.writelines(
                json.dumps({"index": i, "prediction": v}, ensure_ascii=False) + "\n"
                for i, v in zip(preds.index, preds.values)
            )
    tmp.replace(out)
    return out


def predict_file(f: Finetuned, input_path: str | Path, out: str | Path, **kw) -> tuple[Path, Predictions]:
    """Read ``input_path``, predict, write to ``out``."""
    examples, index = read_inputs(f, input_path)
    preds = Predictions(index, predict(f, examples, **kw))
    return write(f, preds, out, input_path, examples), preds
