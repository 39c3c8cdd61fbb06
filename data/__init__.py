"""Data: the multi-trace JSONL format, chat formatting and forking tags, tokenizers, and the
synthetic task of the demo. See each module's docstring."""
from data.chat import (IGNORE, Encoded, Tags, collate, encode, encode_example, forking_tags,
                       prompt_text, sequence, tag_text)
from data.traces import DataError, Example, load_traces

__all__ = ["IGNORE", "Encoded", "Tags", "collate", "encode", "encode_example", "forking_tags", "prompt_text",
           "sequence", "tag_text", "DataError", "Example", "load_traces"]
