"""Data: the multi-trace JSONL format, the RL prompt format, chat formatting and forking tags,
tokenizers, the synthetic task of the demo, and converters of public data. See each module's docstring."""
from data.chat import Encoded, Tags, encode, encode_example, forking_tags, prompt_text, sequence, tag_text
from data.prompts import Prompt, load_prompts
from data.traces import DataError, Example, load_traces

__all__ = ["Encoded", "Tags", "encode", "encode_example", "forking_tags", "prompt_text", "sequence", "tag_text",
           "Prompt", "load_prompts", "DataError", "Example", "load_traces"]
