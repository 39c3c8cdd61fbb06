"""
model.py against transformers' Qwen2ForCausalLM (the oracle): logits, losses, checkpoints both
ways, greedy decoding, the KV cache, and the official parameter counts.

    python -m pytest -q test_model.py
"""
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen2Config, Qwen2ForCausalLM

from conftest import TINY_HF
from model import PRESETS, Config, Qwen2, count_parameters, sample

TINY = {**TINY_HF, "rope_theta": 1e6, "rms_norm_eps": 1e-6}  # not the defaults: both must be read


def hf_model(tied, seed=0, **overrides):
    """A random transformers Qwen2 with non-zero biases and non-unit norms, so they are tested."""
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**{**TINY, **overrides}, tie_word_embeddings=tied)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


@pytest.fixture(params=[(True, None), (False, None), (True, "2KB"), (False, "20KB")],
                ids=["tied", "untied", "tied-sharded", "untied-sharded"])
def checkpoint(request, tmp_path):
    tied, shard = request.param
    hf = hf_model(tied)
    kwargs = {"max_shard_size": shard} if shard else {}
    hf.save_pretrained(tmp_path / "hf", **kwargs)
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists() == bool(shard)
    return hf, tmp_path


def test_logits_match_transformers(checkpoint):
    hf, tmp = checkpoint
    ours = Qwen2.from_pretrained(tmp / "hf")
    for shape in [(3, 17), (1, 300)]:  # the long one exercises RoPE far from position 0
        ids = torch.randint(0, TINY["vocab_size"], shape)
        torch.testing.assert_close(ours(ids), hf(ids).logits, rtol=1e-5, atol=1e-5)


def test_saved_checkpoint_loads_into_transformers(checkpoint):
    hf, tmp = checkpoint
    ours = Qwen2.from_pretrained(tmp / "hf")
    ours.save_pretrained(tmp / "ours", max_shard_bytes=30_000)  # several shards and an index
    config = json.loads((tmp / "ours" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    back = Qwen2ForCausalLM.from_pretrained(tmp / "ours").eval()
    ids = torch.randint(0, TINY["vocab_size"], (2, 11))
    torch.testing.assert_close(back(ids).logits, hf(ids).logits, rtol=1e-5, atol=1e-5)


def test_per_sequence_loss_matches_transformers():
    hf = hf_model(tied=False)
    ours = Qwen2(Config(**TINY, tie_word_embeddings=False))
    ours.load_state_dict(hf.state_dict())
    ids = torch.randint(0, TINY["vocab_size"], (3, 13))
    labels = ids.clone()
    labels[0, :5] = -100  # a prompt without loss
    labels[2, 9:] = -100  # right padding
    targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # ours take targets already shifted
    nll, n = ours(ids, targets=targets)
    for b in range(3):
        expected = hf(ids[b:b + 1], labels=labels[b:b + 1]).loss
        assert n[b] == (labels[b, 1:] != -100).sum()
        torch.testing.assert_close(nll[b] / n[b], expected, rtol=1e-5, atol=1e-6)
    # per token: the NLL of each position under transformers' logits, 0 where there is no target
    nll_t, mask = ours(ids, targets=targets, per_token=True)
    logp = torch.log_softmax(hf(ids).logits.float(), -1)
    expected = -logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1) * (targets != -100)
    torch.testing.assert_close(nll_t, expected, rtol=1e-5, atol=1e-5)
    assert mask.tolist() == (targets != -100).long().tolist()
    torch.testing.assert_close(nll_t.sum(1), nll, rtol=1e-5, atol=1e-5)


def test_greedy_generation_matches_transformers():
    hf = hf_model(tied=True, seed=1)
    ours = Qwen2(Config(**TINY, tie_word_embeddings=True))
    ours.load_state_dict(hf.state_dict())
    prompts = [[5, 17, 3, 99, 42, 7, 8], [11, 2, 60]]
    ours_out = ours.generate(prompts, max_new_tokens=24)
    # transformers wants left padding and an attention mask for prompts of different lengths.
    P = max(map(len, prompts))
    ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    hf_out = hf.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False,
                         pad_token_id=0, eos_token_id=None)
    assert [len(o) for o in ours_out] == [24, 24]
    assert ours_out == hf_out[:, P:].tolist()


def test_kv_cache_decode_equals_full_forward():
    torch.manual_seed(0)
    model = Qwen2(Config(**TINY, tie_word_embeddings=False)).eval()
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8]]
    out = model.generate(prompts, max_new_tokens=6, forced=[[9, 10]] * len(prompts))
    assert all(o[:2] == [9, 10] for o in out)
    for p, o in zip(prompts, out):
        full = torch.tensor([p + o])
        logits = model(full)[0]  # (T, V) without padding or cache
        # Each generated token (after the forced ones) is the argmax of the full forward pass.
        start = len(p) + 2
        assert o[2:] == logits[start - 1:-1].argmax(-1).tolist()

    # Logits, not only argmax: step the cache one token at a time against the full pass.
    from model import KVCache
    ids = torch.randint(0, TINY["vocab_size"], (2, 9))
    cache = KVCache(model.config, 2, 9, "cpu", torch.float32)
    steps = [model(ids[:, :4], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(4, 9)]
    torch.testing.assert_close(torch.cat(steps, 1), model(ids), rtol=1e-5, atol=1e-5)


def test_stop_ids_and_seeded_sampling():
    torch.manual_seed(0)
    model = Qwen2(Config(**TINY)).eval()
    prompts = [[1, 2, 3], [4, 5]]
    greedy = model.generate(prompts, max_new_tokens=10)
    stop = greedy[0][3]
    stopped = model.generate(prompts, max_new_tokens=10, stop_ids=[stop])
    assert stopped[0] == greedy[0][:greedy[0].index(stop) + 1]
    draw = lambda: model.generate(prompts, 10, temperature=1.0,
                                  generators=[torch.Generator().manual_seed(3 + i) for i in range(len(prompts))])
    assert draw() == draw()
    # A nucleus this small keeps only the most likely token: sampling becomes greedy.
    nucleus = model.generate(prompts, 10, temperature=1.0, top_p=1e-6, generators=[torch.Generator()] * len(prompts))
    assert nucleus == greedy


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample(logits, 1.0, 0.8, [g]) for _ in range(2000)])
    assert set(draws.flatten().tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.8
    assert abs((draws == 0).float().mean().item() - 0.5 / 0.8) < 0.05
    # Without a nucleus every token keeps its probability (the CDF inversion is unbiased).
    draws = torch.stack([sample(logits, 1.0, 1.0, [g]) for _ in range(4000)]).flatten()
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.025, rtol=0)


def test_each_row_samples_from_its_own_generator():
    """A row's samples depend on its own generator only, not on the rows beside it in the batch."""
    torch.manual_seed(0)
    model = Qwen2(Config(**TINY)).eval()
    alone = model.generate([[1, 2, 3]], 8, temperature=1.0, generators=[torch.Generator().manual_seed(5)])
    batch = model.generate([[4, 5], [1, 2, 3], [6]], 8, temperature=1.0,
                           generators=[torch.Generator().manual_seed(s) for s in (9, 5, 7)])
    assert batch[1] == alone[0]


@pytest.mark.parametrize("name,expected", [("qwen2.5-0.5b", 494_032_768), ("qwen2.5-32b", 32_763_876_352)])
def test_official_parameter_counts(name, expected):
    with torch.device("meta"):
        model = Qwen2(Config.preset(name))
    assert count_parameters(model) == expected


def test_config_reads_both_rope_spellings(tmp_path):
    for raw in ({"rope_theta": 12345.0}, {"rope_parameters": {"rope_type": "default", "rope_theta": 12345.0}}):
        (tmp_path / "config.json").write_text(json.dumps({**PRESETS["tiny"], **raw}))
        assert Config.from_json(tmp_path / "config.json").rope_theta == 12345.0
    (tmp_path / "config.json").write_text(json.dumps(PRESETS["tiny"]))
    assert Config.from_json(tmp_path / "config.json").rope_theta == Qwen2Config().rope_parameters["rope_theta"]
    (tmp_path / "config.json").write_text(json.dumps({**PRESETS["tiny"], "use_sliding_window": True}))
    with pytest.raises(ValueError, match="sliding"):
        Config.from_json(tmp_path / "config.json")


def test_missing_tensor_is_an_error(tmp_path):
    model = Qwen2(Config(**TINY, tie_word_embeddings=False))
    sd = model.state_dict()
    del sd["model.norm.weight"]
    model.save_pretrained(tmp_path, tensors=sd.items())
    with pytest.raises(ValueError, match="lacks 1 tensors"):
        Qwen2.from_pretrained(tmp_path)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = Qwen2(Config(**TINY))
    ids = torch.randint(0, TINY["vocab_size"], (2, 10))
    grads = []
    for ac in (False, True):
        model.gradient_checkpointing = ac
        model.zero_grad()
        nll, _ = model(ids, targets=ids)
        nll.sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_model_py_stands_alone(tmp_path):
    """model.py copied on its own into an empty folder, run where nothing else of the project can
    be imported: logits, the loss (full-logits fallback), generate, and a save/load round trip."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent
    shutil.copy(root / "model.py", tmp_path / "model.py")
    (tmp_path / "check.py").write_text(f"""
import sys
from pathlib import Path
import torch
import torch.nn.functional as F
assert all(Path(p or ".").resolve() != Path({str(root)!r}) for p in sys.path)
from model import Config, Qwen2
for name in ("kernels", "data", "distributed", "run"):
    try:
        __import__(name)
        raise SystemExit(name + " is importable: not a clean folder")
    except ImportError:
        pass
torch.manual_seed(0)
model = Qwen2(Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2))
ids = torch.randint(0, 50, (2, 7))
logits = model(ids)
assert logits.shape == (2, 7, 50)
targets = ids.roll(-1, 1)
targets[:, -1] = -100
nll, n = model(ids, targets=targets)
expect = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").sum(1)
torch.testing.assert_close(nll, expect)
assert n.tolist() == [6, 6]
out = model.generate(ids, 5)
assert len(out) == 2 and all(len(o) == 5 for o in out)
model.save_pretrained("saved")
back = Qwen2.from_pretrained("saved")
torch.testing.assert_close(back(ids), logits)
print("ok")
""")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "check.py"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
