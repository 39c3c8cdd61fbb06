"""
Chat formatting, the plain-text forking tags, and the token sequences SSFT trains on.

A training sequence is the Qwen2.5 chat template with the assistant turn opened, then the tag,
then the trace (as in the authors' released evaluation code):

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{question}<|im_end|>\\n
    <|im_start|>assistant\\n<|im_start|><think{i}>\\n{trace}<|im_end|>

Tags are ordinary text, not new vocabulary entries. With the Qwen2.5 tokenizer
`<|im_start|><think2>\\n` is [151644, 13708, 766, 17, 397]: the tags differ only in the digit,
the *forking token*. `forking_tags` finds that position for any tokenizer, so the same code runs
with the real vocabulary and with the small tokenizer of the synthetic task.

Prompt, tag and trace are tokenised separately and concatenated, so the tag's ids (and the
forking position) never depend on the neighbouring text.

    python -m pytest -q test_data.py
"""
from dataclasses import dataclass

from kernels import IGNORE_INDEX

SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


def prompt_text(question, system=SYSTEM):
    """The chat template up to and including the opened assistant turn."""
    return (f"{IM_START}system\n{system}{IM_END}\n{IM_START}user\n{question}{IM_END}\n"
            f"{IM_START}assistant\n")


def tag_text(i):
    """Tag i (0-based: 0 is <think1>) opening the reasoning; None gives the single shared tag
    <think> of `mixed` mode. Only the text the model and the user read is 1-based."""
    return f"{IM_START}<think{'' if i is None else i + 1}>\n"


def encode(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


@dataclass
class Tags:
    ids: list  # ids[i] are the token ids of tag i (<think{i+1}>)
    fork: int  # index, within each tag, of the one token where the tags differ
    fork_ids: list  # fork_ids[i] = ids[i][fork]

    @property
    def before_fork(self):
        """The tokens before the forking token, the same in every tag."""
        return self.ids[0][:self.fork]


def forking_tags(tok, n):
    """Tokenise the n tags and find the forking position: the tags must have the same length and
    differ in exactly one token (e.g. n = 10 fails with Qwen2.5, where `10` is two digit tokens)."""
    ids = [encode(tok, tag_text(i)) for i in range(n)]
    if n < 2:
        raise ValueError(f"need at least 2 tags to fork, got {n}")
    if len({len(t) for t in ids}) != 1:
        raise ValueError(f"the {n} tags tokenise to different lengths {[len(t) for t in ids]}")
    differ = [p for p in range(len(ids[0])) if len({t[p] for t in ids}) > 1]
    if len(differ) != 1 or len({t[differ[0]] for t in ids}) != n:
        raise ValueError(f"the {n} tags must differ in exactly one token, with n distinct values; "
                         f"they differ at positions {differ}")
    return Tags(ids, differ[0], [t[differ[0]] for t in ids])


@dataclass
class Encoded:
    """A question tokenised once: its chat prompt, and each trace followed by <|im_end|>."""
    prompt: list
    traces: list


def encode_example(tok, ex, system=SYSTEM):
    return Encoded(encode(tok, prompt_text(ex.question, system)), [encode(tok, t + IM_END) for t in ex.traces])


def sequence(prompt, tag, trace, max_len=None, tag_loss=True):
    """Input ids and aligned targets (targets[t] is the token after position t) for one
    (question, tag, trace). Loss covers the tag and the trace (everything after
    `<|im_start|>assistant\\n`), or only the trace when tag_loss is False. Truncated to max_len."""
    full = prompt + tag + trace
    first = len(prompt) if tag_loss else len(prompt) + len(tag)  # first token that takes loss
    targets = [IGNORE_INDEX] * (first - 1) + full[first:]
    return full[:-1][:max_len], targets[:max_len]
