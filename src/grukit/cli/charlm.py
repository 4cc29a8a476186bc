"""``grukit charlm fit | generate | evaluate``: character language model (:class:`grukit.tasks.CharLM`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from grukit.cli import common, launch
from grukit.cli.common import add_parser, amount, positive_float, positive_int


def register(tasks) -> None:
    actions = common.add_task(
        tasks, "charlm", "character language model: train on any UTF-8 text, generate, measure bits/char",
        "A character-level language model (Embedding -> GRU -> Dense per character): train it on a "
        "UTF-8 text file, measure it in bits per character beside unigram and bigram counts, and "
        "generate text one character at a time.",
        """
          grukit charlm fit corpus.txt --epochs 5 --out runs/lm
          grukit charlm generate runs/lm --prompt "The " --length 200 --temperature 0.8 --top-k 20 --seed 0
          grukit charlm evaluate runs/lm held_out.txt
        """)

    fit = add_parser(actions, "fit", "train a character language model on a text file and save it",
                     "Train a CharLM on TEXT (UTF-8, may be .gz) and save it in --out. The last --validation "
                     "part of the text is held out for the validation loss; with --test the saved model is "
                     "scored on another file.", """
          grukit charlm fit corpus.txt --out runs/lm
          grukit charlm fit corpus.txt --sequence-length 100 --units 256 --epochs 10 --test valid.txt --out runs/lm
        """)
    fit.add_argument("text", metavar="TEXT", help="UTF-8 text file to learn")
    model = fit.add_argument_group("language model")
    model.add_argument("--sequence-length", type=positive_int, default=100, metavar="N",
                       help="characters per training chunk")
    model.add_argument("--embedding-dim", type=positive_int, default=64, metavar="N", help="character embedding size")
    model.add_argument("--validation", type=amount, default=0.05, metavar="AMOUNT",
                       help="last part of the text (fraction or characters) held out for the validation loss")
    model.add_argument("--test", metavar="FILE", help="a UTF-8 text scored after training")
    common.add_training_options(fit, epochs=10, batch_size=64, learning_rate=2e-3, units=256)
    common.add_runtime_options(fit)
    fit.set_defaults(handler=run_fit, prepare=prepare_fit)

    generate = add_parser(actions, "generate", "generate text after a prompt",
                          "Sample --length characters after --prompt, one at a time, from softmax(logits / "
                          "--temperature) restricted to the --top-k most likely characters. --top-k 1 is greedy; "
                          "the same --seed gives the same text.", """
          grukit charlm generate runs/lm --prompt "The " --length 200 --temperature 0.8 --top-k 20 --seed 0
          grukit charlm generate runs/lm --prompt "Once" --top-k 1        # greedy
        """)
    generate.add_argument("run", metavar="RUN", help="run directory written by `grukit charlm fit`")
    generate.add_argument("--prompt", default="\n", help="the text to continue, at least one character (default: "
                                                           "a newline, so the text starts as a new line would)")
    generate.add_argument("--length", type=int, default=200, metavar="N", help="characters to generate")
    generate.add_argument("--temperature", type=positive_float, default=1.0, metavar="T",
                          help="1 samples the model's distribution; smaller is more conservative")
    generate.add_argument("--top-k", type=positive_int, default=None, metavar="K",
                          help="sample among the K most likely characters only (default: all)")
    generate.add_argument("--seed", type=int, default=None, help="makes the text reproducible (default: random)")
    generate.add_argument("--no-prompt", action="store_true", help="print only the continuation, not the prompt")
    common.add_runtime_options(generate)
    generate.set_defaults(handler=run_generate)

    evaluate = add_parser(actions, "evaluate", "bits per character of a saved model on a text",
                          "Cross-entropy per character (nats, bits, perplexity) of a saved model on TEXT, beside "
                          "unigram and bigram baselines counted on the training text.", """
          grukit charlm evaluate runs/lm held_out.txt
        """)
    evaluate.add_argument("run", metavar="RUN", help="run directory written by `grukit charlm fit`")
    evaluate.add_argument("text", metavar="TEXT", help="UTF-8 text file to score")
    evaluate.add_argument("--json", action="store_true", help="print the scores as JSON instead of a table")
    common.add_runtime_options(evaluate)
    evaluate.set_defaults(handler=run_evaluate)


def prepare_fit(args: argparse.Namespace) -> dict:
    from grukit.data import read_corpus
    from grukit.tasks import CharLM

    common.check_run_directory(args)
    lm = CharLM(sequence_length=args.sequence_length, units=args.units, cell=args.cell,
                embedding_dim=args.embedding_dim, validation=args.validation, epochs=args.epochs,
                batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed,
                verbose=common.verbose(args), precision=args.precision)
    text = read_corpus(common.require_file(args.text, "TEXT"))
    test = read_corpus(common.require_file(args.test, "--test")) if args.test else None
    return {"lm": lm, "text": text, "test": test}


def run_fit(args: argparse.Namespace) -> int:
    job = prepare_fit(args)
    lm = job["lm"]
    common.say(args, f"read {len(job['text']):,} characters from {args.text}")
    with launch.distributed_training():
        common.setup_threads(args)
        lm.fit(job["text"], distributed=launch.in_worker())
    if not launch.is_main():
        return 0
    record = {"command": common.command_line(), "task": "CharLM", "data": {"text": args.text, "test": args.test},
              "processes": launch.world_size(), "history": common.history_record(lm.history)}
    evaluation = lm.evaluate(job["test"]) if job["test"] is not None else None
    if evaluation is not None:
        record["evaluation"] = evaluation.to_dict()
    out = lm.save(common.check_run_directory(args))
    common.write_run_record(out, record)
    epochs = len(lm.history.history.get("loss", [])) if lm.history else 0
    print(f"saved {out} ({epochs} epoch(s); {len(lm.vocabulary)} characters in the vocabulary)", flush=True)
    if evaluation is not None:
        common.print_table(f"{args.test} ({evaluation.characters:,} characters predicted):", evaluation.table())
    return 0


def _load(run: str):
    directory = common.run_directory(run)              # before the import of torch: a wrong path answers at once
    from grukit.tasks import CharLM

    return CharLM.load(directory)


def run_generate(args: argparse.Namespace) -> int:
    common.setup_threads(args)
    lm = _load(args.run)
    text = lm.generate(args.prompt, length=args.length, temperature=args.temperature, top_k=args.top_k,
                       seed=args.seed)
    print(text if args.no_prompt else args.prompt + text, flush=True)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    common.setup_threads(args)
    lm = _load(args.run)
    result = lm.evaluate(Path(common.require_file(args.text, "TEXT")))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        common.print_table(f"{args.text} ({result.characters:,} characters predicted):", result.table())
    return 0
