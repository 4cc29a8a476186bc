"""A character-level GRU language model on IMDB review text, in bits per character beside exact
unigram and bigram baselines, and generation speed through the streaming path.

Training text: the IMDB *train* reviews (../shared/data/imdb, grukit.data.read_imdb) in file order,
``<br />`` tags turned into newlines, one review per line, the first ``--train-chars`` characters
(the last 5% of them held out for the validation loss). Held-out text: the first ``--test-chars``
characters of the *test* reviews, prepared the same way (other reviews, never trained on).
grukit.tasks.CharLM trains ``Embedding(V, 64) -> GRU(256, return_sequences=True) ->
TimeDistributed(Dense(V))`` with sparse categorical cross-entropy on chunks of 100 characters.
``evaluate`` carries the state through the whole held-out text, so each character is predicted from
all before it. The baselines are counted exactly on the same training characters with additive
smoothing 0.5 over the vocabulary. Generation samples through the layer's streamer (one compiled
step per character); its speed is measured per character for two lengths to show it is O(n).
Writes OUT/char_lm.json and OUT/char_lm.md atomically.

    python -m benchmarks.char_lm                            # about 4 minutes on 2 cores
    python -m benchmarks.char_lm --train-chars 200000 --epochs 1     # a quick run
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from .report import write_atomic

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
PROMPTS = ("This movie was ", "The acting ")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.char_lm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-chars", type=int, default=800_000, help="training characters (default %(default)s)")
    parser.add_argument("--test-chars", type=int, default=100_000, help="held-out characters (default %(default)s)")
    parser.add_argument("--cell", default="gru", help="gru, lstm, rnn, mgu or mingru (default %(default)s)")
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--sequence-length", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--generate", type=int, default=300, help="characters per sample (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DATA, help="the IMDB folder (default %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def imdb_text(folder: Path, split: str, characters: int) -> str:
    from grukit.data import read_imdb

    texts, _ = read_imdb(folder, split=split)
    pieces, total = [], 0
    for review in texts:
        piece = review.replace("<br />", "\n") + "\n"
        pieces.append(piece)
        total += len(piece)
        if total >= characters:
            break
    return "".join(pieces)[:characters]


def generation_speed(lm, length: int) -> float:
    """Seconds per generated character (greedy, after one warm-up call)."""
    lm.generate(PROMPTS[0], length=10, top_k=1)
    start = time.perf_counter()
    lm.generate(PROMPTS[0], length=length, top_k=1)
    return (time.perf_counter() - start) / length


def main(argv=None) -> None:
    args = parse_args(argv)
    from grukit.tasks import CharLM

    if not args.data.is_dir():
        sys.exit(f"error: no IMDB folder at {args.data}; pass --data")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    train_text = imdb_text(args.data, "train", args.train_chars)
    test_text = imdb_text(args.data, "test", args.test_chars)
    say(f"text: {len(train_text):,} training characters (IMDB train reviews), {len(test_text):,} held-out "
        f"(IMDB test reviews); {len(set(train_text))} distinct training characters")
    lm = CharLM(sequence_length=args.sequence_length, units=args.units, cell=args.cell,
                embedding_dim=args.embedding_dim, epochs=args.epochs, batch_size=args.batch_size,
                learning_rate=args.learning_rate, seed=args.seed, verbose=2)
    say(f"training {args.cell.upper()}({args.units}) for {args.epochs} epoch(s) on chunks of {args.sequence_length}")
    start = time.perf_counter()
    lm.fit(train_text)
    train_seconds = time.perf_counter() - start
    say(f"trained in {train_seconds:.0f} s; evaluating on the held-out text")
    result = lm.evaluate(test_text)
    say(result.table())
    samples = []
    for prompt in PROMPTS:
        for settings in ({"top_k": 1}, {"temperature": 0.8, "seed": 0}, {"temperature": 0.5, "top_k": 10, "seed": 0}):
            text = lm.generate(prompt, length=args.generate, **settings)
            samples.append({"prompt": prompt, "settings": settings, "text": text})
            say(f"--- {prompt!r} {settings}\n{prompt}{text}")
    speed = {str(length): generation_speed(lm, length) for length in (200, 2000)}
    say("generation: " + ", ".join(f"{1e6 * s:.0f} us/char at length {n}" for n, s in speed.items()))
    machine = {"python": platform.python_version(), "machine": platform.machine(),
               "processor": platform.processor(), "torch": torch.__version__, "threads": args.threads,
               "seed": args.seed, "total_seconds": round(time.perf_counter() - started, 1)}
    history = lm.history.history
    record = {"machine": machine, "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "config": lm.config.to_dict(), "vocabulary_size": len(lm.vocabulary),
              "train_characters": len(train_text), "test_characters": len(test_text),
              "train_seconds": round(train_seconds, 1), "loss": history["loss"], "val_loss": history.get("val_loss"),
              "evaluation": result.to_dict(), "table": result.table(), "samples": samples,
              "seconds_per_generated_character": speed}
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "char_lm.json", json.dumps(record, indent=1, ensure_ascii=False))
    write_atomic(args.out / "char_lm.md", markdown(record))
    say(f"wrote {args.out / 'char_lm.json'} and {args.out / 'char_lm.md'} ({machine['total_seconds']:.0f} s in all)")


def markdown(record: dict) -> str:
    config, machine = record["config"], record["machine"]
    loss = ", ".join(f"{v:.3f}" for v in record["loss"])
    val = ", ".join(f"{v:.3f}" for v in record["val_loss"] or [])
    lines = ["# Character language model on IMDB reviews: bits per character", "",
             "`python -m benchmarks.char_lm` (grukit.tasks.CharLM). Training: the first "
             f"{record['train_characters']:,} characters of the IMDB train reviews (`<br />` -> newline, one review "
             f"per line; the last 5% held out for the validation loss); held out: the first "
             f"{record['test_characters']:,} characters of the IMDB test reviews (other reviews). Vocabulary: "
             f"{record['vocabulary_size']} characters (those of the training part, and U+FFFD standing for unseen ones). Model: "
             f"Embedding({record['vocabulary_size']}, {config['embedding_dim']}) -> {config['cell'].upper()}"
             f"({config['units']}, return_sequences=True) -> TimeDistributed(Dense({record['vocabulary_size']})), "
             f"chunks of {config['sequence_length']}, Adam {config['learning_rate']}, batch {config['batch_size']}, "
             f"{config['epochs']} epoch(s) in {record['train_seconds']:.0f} s.", "",
             "The held-out text is scored with the state carried through it: each character after the first is "
             "predicted from all before it. Unigram and bigram are counted exactly on the same training "
             "characters with additive smoothing 0.5 (Jeffreys-Perks) over the vocabulary.", "",
             record["table"], "",
             f"Training loss per epoch (nats/char, chunk starts without context): {loss}; validation: {val}.", "",
             "Generation runs the GRU's streamer, one compiled step per character: "
             + ", ".join(f"{1e6 * s:.0f} us per character for {n} characters"
                         for n, s in record["seconds_per_generated_character"].items())
             + " (flat per character: O(n)).", "",
             "## Samples", ""]
    for sample in record["samples"]:
        settings = ", ".join(f"{k}={v}" for k, v in sample["settings"].items())
        lines += [f"`{settings}`:", "", "```", sample["prompt"] + sample["text"], "```", ""]
    lines += [f"Machine: {machine['processor'] or machine['machine']}, torch {machine['torch']}, "
              f"{machine['threads']} threads, seed {machine['seed']}; {machine['total_seconds']:.0f} s in all.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
