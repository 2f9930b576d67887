"""Batch statistics two loops deep: characters inside words inside sentences.

A synthetic task: a sentence is a sequence of words, a word a sequence of
characters from a small alphabet (one-hot vectors). The label says whether
the sentence holds more of the character ``a`` than of ``b``.

The model is a hierarchical recurrent network written with two nested
``pytensor.scan`` loops:

* the inner loop reads the characters of a word, one step per character,
  ``h[c] = tanh(BN_char[c](x[c] W + h[c-1] U))``, and gives the word vector;
* the outer loop reads the word vectors, one step per word,
  ``s[w] = tanh(BN_word[w](word[w] V + s[w-1] R))``; the class is read from
  the last ``s``.

Batch normalization is per step (separate statistics for each character
position and each word position), so the character statistics form a
two-level table indexed by (word step, character step). Within a batch all
words are padded to the batch's longest word and all sentences to its
longest sentence; padded steps carry the state through unchanged (masks), so
the padding does not change an example's output once statistics no longer
depend on the batch. Batches differ in their padded lengths, so later cells
of the table are reached by fewer batches: popstats counts them
(``stats[label].coverage``) and averages each cell over the batches that
reached it.

After brief training, ``popstats.get_inference_graph`` estimates the
population statistics and rewrites the graph. The script prints the coverage
table, test accuracy with batch and population statistics at batch sizes 64
and 1, and the same with ``time=("step", "pooled")``: per word step, one
character statistic pooled over all character steps.

Run::

    python examples/nested_words.py         # full setting
    python examples/nested_words.py --fast  # used by the tests

The full setting trains for about half a minute on 2 cores. Compilation comes
on top: with the default C backend (``CVM``) about a minute on an empty
compilation cache (the gradient of the nested loops), seconds once cached;
Numba, PyTensor's default, takes much longer on a cold cache.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.tensor.special import log_softmax, softmax

try:
    import popstats
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import popstats

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "output"
EPS = 1e-5
FLOATX = pytensor.config.floatX
ALPHABET = "abcde"
EVAL_BATCH = 64


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------


def make_sentences(n: int, max_words: int, max_chars: int, rng: np.random.Generator):
    """``n`` sentences (lists of words, each an int array of characters) and
    their labels: 1 if a sentence has more ``a`` (0) than ``b`` (1)."""
    sentences, labels = [], []
    for _ in range(n):
        words = [
            rng.integers(0, len(ALPHABET), size=int(rng.integers(1, max_chars + 1)))
            for _ in range(int(rng.integers(2, max_words + 1)))
        ]
        chars = np.concatenate(words)
        sentences.append(words)
        labels.append(int((chars == 0).sum() > (chars == 1).sum()))
    return sentences, np.asarray(labels, dtype=np.int64)


def pad_batch(sentences) -> dict:
    """One-hot characters ``(words, chars, batch, alphabet)`` padded to the
    batch's longest sentence and word, with character and word masks."""
    n_words = max(len(s) for s in sentences)
    n_chars = max(len(w) for s in sentences for w in s)
    x = np.zeros((n_words, n_chars, len(sentences), len(ALPHABET)), dtype=FLOATX)
    char_mask = np.zeros((n_words, n_chars, len(sentences)), dtype=FLOATX)
    for b, sentence in enumerate(sentences):
        for w, word in enumerate(sentence):
            x[w, np.arange(len(word)), b, word] = 1
            char_mask[w, : len(word), b] = 1
    word_mask = (char_mask.sum(axis=1) > 0).astype(FLOATX)
    return {"x": x, "char_mask": char_mask, "word_mask": word_mask}


def batches(sentences, labels, batch_size, rng=None):
    """Padded batches in order, or, given ``rng``, bucketed by length.

    Bucketing (sort by number of words, then longest word; cut into batches;
    shuffle the batches) keeps padding small, and makes the padded lengths
    differ from batch to batch: the later steps are reached by fewer batches.
    """
    order = np.arange(len(sentences))
    if rng is not None:
        noise = rng.random(len(sentences))
        key = [
            (len(s), max(len(w) for w in s), r)
            for s, r in zip(sentences, noise, strict=True)
        ]
        order = np.asarray(sorted(order, key=key.__getitem__))
    chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if rng is not None:
        chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    for idx in chunks:
        yield pad_batch([sentences[i] for i in idx]), labels[idx]


# ----------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------


def init_params(n_hidden: int, rng: np.random.Generator) -> dict:
    def orthogonal(n):
        q, r = np.linalg.qr(rng.normal(size=(n, n)))
        return q * np.sign(np.diag(r))

    a = len(ALPHABET)
    values = {
        "W": rng.normal(scale=1 / np.sqrt(a), size=(a, n_hidden)),
        "U": orthogonal(n_hidden),
        "gamma_c": np.full(n_hidden, 0.5),
        "beta_c": np.zeros(n_hidden),
        "V": rng.normal(scale=1 / np.sqrt(n_hidden), size=(n_hidden, n_hidden)),
        "R": orthogonal(n_hidden),
        "gamma_w": np.full(n_hidden, 0.5),
        "beta_w": np.zeros(n_hidden),
        "W_out": rng.normal(scale=1 / np.sqrt(n_hidden), size=(n_hidden, 2)),
        "b_out": np.zeros(2),
    }
    return {k: pytensor.shared(v.astype(FLOATX), name=k) for k, v in values.items()}


def batch_norm(a, gamma, beta, label):
    """Normalize ``a`` (batch, units) by its batch statistics, marked."""
    n = a.shape[0]
    mean = popstats.bn_statistic(
        a.mean(axis=0), f"{label}.mean", role="mean", group=label, count=n
    )
    var = popstats.bn_statistic(
        a.var(axis=0), f"{label}.var", role="var", group=label, count=n
    )
    return gamma * (a - mean) / pt.sqrt(var + EPS) + beta


def build_model(p: dict, n_hidden: int):
    x = pt.tensor4("x", dtype=FLOATX)  # (words, chars, batch, alphabet)
    char_mask = pt.tensor3("char_mask", dtype=FLOATX)  # (words, chars, batch)
    word_mask = pt.matrix("word_mask", dtype=FLOATX)  # (words, batch)
    zeros = pt.zeros((x.shape[2], n_hidden), dtype=FLOATX)

    def char_step(x_c, m_c, h, W, U, gamma_c, beta_c):
        h_new = pt.tanh(
            batch_norm(pt.dot(x_c, W) + pt.dot(h, U), gamma_c, beta_c, "char")
        )
        m = m_c[:, None]
        return m * h_new + (1 - m) * h

    def word_step(x_w, m_chars, m_w, s, W, U, gamma_c, beta_c, V, R, gamma_w, beta_w):
        hs = pytensor.scan(
            char_step,
            sequences=[x_w, m_chars],
            outputs_info=[zeros],
            non_sequences=[W, U, gamma_c, beta_c],
            return_updates=False,
        )
        word = hs[-1]
        s_new = pt.tanh(
            batch_norm(pt.dot(word, V) + pt.dot(s, R), gamma_w, beta_w, "word")
        )
        m = m_w[:, None]
        return m * s_new + (1 - m) * s

    names = ["W", "U", "gamma_c", "beta_c", "V", "R", "gamma_w", "beta_w"]
    ss = pytensor.scan(
        word_step,
        sequences=[x, char_mask, word_mask],
        outputs_info=[zeros],
        non_sequences=[p[k] for k in names],
        return_updates=False,
    )
    logits = pt.dot(ss[-1], p["W_out"]) + p["b_out"]
    return [x, char_mask, word_mask], logits


def adam_updates(loss, params, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Plain Adam (Kingma & Ba 2015), hand-written to stay dependency-free."""
    grads = pytensor.grad(loss, params)
    t = pytensor.shared(np.asarray(0.0, dtype=FLOATX), name="adam_t")
    t_new = t + 1
    updates = [(t, t_new)]
    scale = lr * pt.sqrt(1 - b2**t_new) / (1 - b1**t_new)
    for param, grad in zip(params, grads, strict=True):
        zeros = np.zeros_like(param.get_value())
        m = pytensor.shared(zeros, name=f"{param.name}_m")
        v = pytensor.shared(zeros.copy(), name=f"{param.name}_v")
        m_new = b1 * m + (1 - b1) * grad
        v_new = b2 * v + (1 - b2) * grad**2
        updates += [(m, m_new), (v, v_new)]
        updates.append((param, param - scale * m_new / (pt.sqrt(v_new) + eps)))
    return updates


# ----------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------


def print_wrapped(text: str) -> None:
    print(textwrap.fill(text, 79))


def format_coverage(coverage: np.ndarray) -> str:
    """The (word step, character step) coverage counts as a small grid."""
    width = max(3, len(str(coverage.max())) + 1)
    head = "word\\char" + "".join(f"{c:>{width}d}" for c in range(coverage.shape[1]))
    lines = [head]
    for w, row in enumerate(coverage):
        lines.append(f"{w:>9d}" + "".join(f"{v:>{width}d}" for v in row))
    return "\n".join(lines)


def format_table(rows: list[dict]) -> str:
    head = ("statistics", "time", "batch size", "accuracy")
    body = [
        (r["statistics"], r["time"], str(r["batch_size"]), f"{r['accuracy']:.4f}")
        for r in rows
    ]
    widths = [max(len(line[k]) for line in [head, *body]) for k in range(4)]
    rule = "  ".join("-" * w for w in widths)
    lines = [rule, "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append(rule)
    for line in body:
        lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
    lines.append(rule)
    return "\n".join(lines)


def write_outputs(directory: Path, rows: list[dict], summary: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "nested_words.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(directory / "nested_words.json", "w") as f:
        json.dump({**summary, "rows": rows}, f, indent=2)


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="tiny setting (seconds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hidden", type=int, default=None, help="units (default 32; 16 with --fast)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training epochs (default 15; 4 with --fast)",
    )
    parser.add_argument(
        "--train-size",
        type=int,
        default=None,
        help="training sentences (default 2000; 256 with --fast)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam step size")
    parser.add_argument("--max-words", type=int, default=6)
    parser.add_argument("--max-chars", type=int, default=6)
    parser.add_argument(
        "--mode",
        default="CVM",
        help="PyTensor compilation mode (default: CVM, the C backend, which "
        "compiles the nested loops' gradient much sooner than Numba on a cold "
        "cache)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"folder for the results table (default {DEFAULT_OUTPUT})",
    )
    args = parser.parse_args(argv)
    defaults = {
        "hidden": 16 if args.fast else 32,
        "epochs": 4 if args.fast else 15,
        "train_size": 256 if args.fast else 2000,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv=None) -> dict:
    """Train, estimate population statistics, evaluate; return the results."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    n_test = 128 if args.fast else 512
    train_s, train_y = make_sentences(
        args.train_size, args.max_words, args.max_chars, rng
    )
    test_s, test_y = make_sentences(n_test, args.max_words, args.max_chars, rng)
    print(
        f"sentences of 2-{args.max_words} words of 1-{args.max_chars} characters "
        f"from '{ALPHABET}': {len(train_s)} train / {len(test_s)} test, "
        f"{train_y.mean():.2f} / {test_y.mean():.2f} with more 'a' than 'b'"
    )

    params = init_params(args.hidden, rng)
    inputs, logits = build_model(params, args.hidden)
    y = pt.vector("y", dtype="int64")
    loss = -log_softmax(logits, axis=1)[pt.arange(y.shape[0]), y].mean()
    probs = softmax(logits, axis=1)
    t0 = time.perf_counter()
    train_fn = pytensor.function(
        [*inputs, y],
        loss,
        updates=adam_updates(loss, list(params.values()), args.lr),
        mode=args.mode,
    )
    batch_fn = pytensor.function(inputs, probs, mode=args.mode)
    print(f"compiled training and evaluation in {time.perf_counter() - t0:.1f}s")
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        losses = [
            train_fn(b["x"], b["char_mask"], b["word_mask"], yb)
            for b, yb in batches(train_s, train_y, args.batch_size, rng)
        ]
        print(
            f"epoch {epoch}/{args.epochs}: mean training loss {np.mean(losses):.4f}, "
            f"{time.perf_counter() - t0:.1f}s"
        )

    # -- population statistics: per (word, character) step ----------------------
    # One pass over the training data, bucketed like the training batches.
    estimation = [b for b, _ in batches(train_s, train_y, args.batch_size, rng)]

    t0 = time.perf_counter()
    probs_pop, stats = popstats.get_inference_graph(
        inputs, probs, estimation, mode=args.mode, return_stats=True
    )
    pop_fn = pytensor.function(inputs, probs_pop, mode=args.mode)
    # -- and with the character statistics pooled over character steps --------
    stats_pooled = popstats.estimate(
        inputs, probs, estimation, time=("step", "pooled"), mode=args.mode
    )
    pooled_fn = pytensor.function(
        inputs, popstats.rewrite(probs, stats_pooled), mode=args.mode
    )
    print(f"estimated and compiled in {time.perf_counter() - t0:.1f}s")

    char, word = stats["char.mean"], stats["word.mean"]
    print()
    print_wrapped(
        f"Statistics found: {', '.join(sorted(stats))}. 'char.*' are two loops "
        f"deep: value shape {char.value.shape} = (word steps, character steps, "
        f"units); 'word.*' one loop deep: {word.value.shape}. Coverage of the "
        f"character statistics (how many of the {char.n_batches} estimation "
        f"batches reached each (word, character) cell; cells never reached "
        f"take the values of the previous character step):"
    )
    print(format_coverage(char.coverage))
    print(f"word statistics coverage per word step: {word.coverage.tolist()}")
    print_wrapped(
        f"With time=('step', 'pooled'): 'char.*' value shape "
        f"{stats_pooled['char.mean'].value.shape} (one value per word step, "
        f"pooled over its character steps), coverage "
        f"{stats_pooled['char.mean'].coverage.tolist()}."
    )

    # -- evaluation -----------------------------------------------------------
    plan = [
        ("batch_64", "batch", "-", batch_fn, EVAL_BATCH),
        ("batch_1", "batch", "-", batch_fn, 1),
        ("population_64", "population", "step", pop_fn, EVAL_BATCH),
        ("population_1", "population", "step", pop_fn, 1),
        ("pooled_64", "population", "(step, pooled)", pooled_fn, EVAL_BATCH),
        ("pooled_1", "population", "(step, pooled)", pooled_fn, 1),
    ]
    t0 = time.perf_counter()
    rows, probabilities, predictions = [], {}, {}
    for key, kind, time_, fn, bs in plan:
        prob = np.concatenate(
            [
                fn(b["x"], b["char_mask"], b["word_mask"])
                for b, _ in batches(test_s, test_y, bs)
            ]
        )
        probabilities[key], predictions[key] = prob, prob.argmax(axis=1)
        rows.append(
            {
                "row": key,
                "statistics": kind,
                "time": time_,
                "batch_size": bs,
                "accuracy": float(np.mean(predictions[key] == test_y)),
            }
        )
    same = bool(
        np.array_equal(predictions["population_1"], predictions["population_64"])
    )
    max_diff = float(
        np.abs(probabilities["population_1"] - probabilities["population_64"]).max()
    )
    print(
        f"\nTest accuracy ({len(test_s)} sentences, evaluated in "
        f"{time.perf_counter() - t0:.1f}s):"
    )
    print(format_table(rows))
    print_wrapped(
        f"* Population statistics: predictions at batch size 1 and {EVAL_BATCH} "
        f"are {'identical' if same else 'DIFFERENT'} (max probability difference "
        f"{max_diff:.1e}), although a sentence alone is padded less than in a "
        f"batch of {EVAL_BATCH}: padded steps leave the state unchanged."
    )
    print_wrapped(
        "* Batch statistics at batch size 1: every normalized value is its "
        "shift, the network ignores its input "
        f"({len(np.unique(predictions['batch_1']))} distinct prediction(s))."
    )

    elapsed = time.perf_counter() - t_start
    summary = {
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
        },
        "pytensor_version": pytensor.__version__,
        "char_coverage": char.coverage.tolist(),
        "word_coverage": word.coverage.tolist(),
        "population_predictions_identical": same,
        "population_max_probability_difference": max_diff,
        "seconds": round(elapsed, 1),
    }
    write_outputs(args.output, rows, summary)
    print(f"\nresults written to {args.output} (nested_words.csv, nested_words.json)")
    print(f"total time {elapsed:.1f}s")
    return {
        "rows": rows,
        "predictions": predictions,
        "probabilities": probabilities,
        "labels": test_y,
        "test": test_s,
        "train": (train_s, train_y),
        "params": {name: var.get_value() for name, var in params.items()},
        "stats": stats,
        "stats_pooled": stats_pooled,
        "estimation_batches": estimation,
        "summary": summary,
        "output": args.output,
    }


if __name__ == "__main__":
    main()
