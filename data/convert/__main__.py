"""The converters' command line: `python -m data.convert {s1k,merge,dapo,code,gpqa} ...` (see __init__.py)."""
import argparse
import sys

from data.convert import __doc__ as DOC
from data.convert.code import convert_code
from data.convert.gpqa import convert_gpqa
from data.convert.public import convert_dapo, convert_s1k, merge_traces
from data.traces import DataError


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m data.convert", description=DOC.split("\n\n")[0].strip())
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("s1k", help="simplescaling/s1K-1.1 -> multi-trace JSONL (DeepSeek-R1, Gemini traces)")
    p.add_argument("input", help="s1K-1.1 as .parquet, .json or .jsonl")
    p.add_argument("output", help="multi-trace .jsonl to write")
    p.add_argument("--drop-reserved", action="store_true",
                   help="drop a trace holding a tag or chat-template string instead of failing")
    p = sub.add_parser("merge", help="append more teachers' traces to a multi-trace JSONL, matched by question")
    p.add_argument("files", nargs="+", metavar="FILE", help="BASE.jsonl EXTRA.jsonl... OUT.jsonl")
    p.add_argument("--by", choices=("id", "question"), default="id",
                   help="match on the id, or on the question text with whitespace collapsed (default: id)")
    p.add_argument("--allow-unmatched", action="store_true", help="drop extra questions that match nothing")
    p = sub.add_parser("dapo", help="BytedTsinghua-SIA/DAPO-Math-17k -> math prompts (deduplicated)")
    p.add_argument("input", help="DAPO-Math-17k as .parquet, .json or .jsonl")
    p.add_argument("output", help="prompt .jsonl to write")
    p = sub.add_parser("code", help="LiveCodeBench code_generation_lite or INTELLECT-2 RL data -> code prompts")
    p.add_argument("input", help=".jsonl, .json or .parquet")
    p.add_argument("output", help="prompt .jsonl to write")
    p = sub.add_parser("gpqa", help="GPQA (Idavidrein/gpqa) -> multiple-choice prompts in the official choice order")
    p.add_argument("input", help="gpqa_diamond.csv (or .jsonl, .json, .parquet with its columns)")
    p.add_argument("output", help="prompt .jsonl to write")
    args = ap.parse_args(argv)
    try:
        if args.command == "s1k":
            convert_s1k(args.input, args.output, args.drop_reserved)
        elif args.command == "merge":
            if len(args.files) < 3:
                ap.error("merge needs BASE.jsonl, at least one EXTRA.jsonl and OUT.jsonl")
            merge_traces(args.files[0], args.files[1:-1], args.files[-1], args.by, args.allow_unmatched)
        elif args.command == "dapo":
            convert_dapo(args.input, args.output)
        elif args.command == "code":
            convert_code(args.input, args.output)
        else:
            convert_gpqa(args.input, args.output)
    except DataError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
