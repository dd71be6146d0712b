"""Building repository versions: files, manifest, validation against torch, versioning."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from genwire_model import cli
from genwire_model.build import BuildOptions, build_version
from genwire_model.export import MAX_ABS_LOGIT_DIFF
from genwire_model.repository import (
    ModelRepository,
    ModelVersion,
    load_tokenizer,
    load_tokenizer_config,
)

from tests.model.profile import assert_head_on_last_position


def test_version_has_everything_triton_and_the_services_need(tiny_version: ModelVersion) -> None:
    files = {p.name for p in tiny_version.path.iterdir()}
    assert {
        "model.py",
        "model.onnx",
        "tokenizer.json",
        "tokenizer_config.json",
        "manifest.json",
        "genwire_runtime",
        "genwire_env.json",
    } <= files
    config = (tiny_version.path.parent / "config.pbtxt").read_text()
    assert "decoupled: true" in config
    for name in (
        "input_ids",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "stop_token_ids",
        "stream",
        "token_ids",
        "logprobs",
        "finished",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "mean_logprob",
        "queue_ms",
        "compute_ms",
        "ttft_ms",
    ):
        assert f'name: "{name}"' in config


def test_manifest_records_source_shape_and_validation(
    tiny_version: ModelVersion, tiny_checkpoint: Path
) -> None:
    m = tiny_version.manifest
    assert m["source"]["checkpoint"] == str(tiny_checkpoint)
    assert len(m["source"]["checkpoint_sha256"]) == 64
    assert m["context_length"] == 64
    assert m["shape"] == {
        "num_layers": 2,
        "num_kv_heads": 2,
        "head_dim": 32,
        "vocab_size": 512,
        "cache_io": "per_layer",
    }
    assert m["build"]["tensorrt"]["built"] is False and m["build"]["tensorrt"]["reason"]
    # ONNX Runtime matches torch on prefill, decode and left-padded batches.
    validation = m["validation"]
    assert set(validation["cases"]) >= {"decode_b4_left_padded", "merged_batch_vs_single"}
    assert 0 <= validation["max_abs_logit_diff"] < MAX_ABS_LOGIT_DIFF
    print(f"largest ONNX-vs-torch logit difference: {validation['max_abs_logit_diff']:.2e}")
    assert validation["smoke"]["greedy_tokens"] == 16


def test_tokenizer_files_carry_chat_template_and_eos(tiny_version: ModelVersion) -> None:
    tokenizer = load_tokenizer(tiny_version)
    config = load_tokenizer_config(tiny_version)
    assert config["eos_token"] == "<|endoftext|>"
    assert tiny_version.eos_token_ids == [tokenizer.token_to_id("<|endoftext|>")]
    assert "<|assistant|>" in config["chat_template"]
    ids = tokenizer.encode("Return the text.").ids
    assert tokenizer.decode(ids) == "Return the text."


def test_new_build_adds_a_version_and_keeps_the_old_one(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    first = build_version(tiny_checkpoint, "m", tmp_path, BuildOptions(), lambda _: None)
    before = {p.name: p.stat().st_mtime_ns for p in first.path.rglob("*")}
    second = build_version(tiny_checkpoint, "m", tmp_path, BuildOptions(), lambda _: None)
    assert (first.version, second.version) == (1, 2)
    assert {p.name: p.stat().st_mtime_ns for p in first.path.rglob("*")} == before
    repo = ModelRepository(tmp_path)
    assert repo.versions("m") == [1, 2]
    assert repo.latest("m").version == 2
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".building")]


def test_repository_api_does_not_import_torch(tiny_version: ModelVersion) -> None:
    code = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from genwire_model.repository import ModelRepository, load_tokenizer\n"
        f"v = ModelRepository(Path({str(tiny_version.path.parent.parent)!r})).latest('tiny-gpt')\n"
        "load_tokenizer(v)\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'version': v.version}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"torch": False, "version": tiny_version.version}


def test_manifest_is_valid_json_on_disk(tiny_version: ModelVersion) -> None:
    on_disk = json.loads((tiny_version.path / "manifest.json").read_text())
    assert on_disk["version"] == tiny_version.version
    assert on_disk["name"] == "tiny-gpt"


def test_llama_family_checkpoint_builds_with_grouped_kv_heads(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        eos_token_id=0,
        bos_token_id=0,
    )
    checkpoint = tmp_path / "llama"
    LlamaForCausalLM(config).save_pretrained(str(checkpoint))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(tiny_checkpoint / name, checkpoint / name)
    version = build_version(checkpoint, "llama", tmp_path / "repo", BuildOptions(), lambda _: None)
    assert version.manifest["source"]["model_type"] == "llama"
    assert version.manifest["shape"]["num_kv_heads"] == 2
    assert version.manifest["validation"]["max_abs_logit_diff"] < MAX_ABS_LOGIT_DIFF
    # The fused copy for ONNX Runtime is validated the same way (RMSNorm, SiLU, rotary).
    fused = version.manifest["build"]["onnxruntime_graph"]
    assert fused["file"] == "model.ort.onnx", fused
    assert fused["validation"]["max_abs_logit_diff"] < MAX_ABS_LOGIT_DIFF
    # The head on the last position only, as for GPT-2 (tests/model/test_cache_io.py).
    for graph in ("model.onnx", "model.ort.onnx"):
        assert_head_on_last_position(version.path / graph, version.manifest["shape"], tmp_path)


def test_intra_op_threads_reach_the_manifest_and_the_runner(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from genwire_model.bench import _scheduler

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    base = ["model", "build", "--checkpoint", str(tiny_checkpoint), "--repository", str(tmp_path)]
    args = parser.parse_args([*base, "--name", "t3", "--intra-op-threads", "3"])
    assert args.func(args) == 0
    version = ModelRepository(tmp_path).latest("t3")
    config = (tmp_path / "t3" / "config.pbtxt").read_text(encoding="utf-8")
    # The version's own option (its manifest), not the config every version shares.
    assert 'key: "intra_op_threads"' not in config
    assert version.manifest["build"]["options"]["intra_op_threads"] == 3
    session = _scheduler(version.path).runner.session
    assert session.get_session_options().intra_op_num_threads == 3
    capsys.readouterr()

    # Refused, not clamped: nothing is built.
    args = parser.parse_args([*base, "--name", "t0", "--intra-op-threads", "0"])
    assert args.func(args) == 2
    assert "--intra-op-threads must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "t0").exists() or not ModelRepository(tmp_path).versions("t0")


def test_the_default_is_one_thread_in_the_build_and_where_a_config_names_none(
    tiny_version: ModelVersion, tmp_path: Path
) -> None:
    from genwire_model.bench import _scheduler
    from genwire_model.runtime.runners import DEFAULT_INTRA_OP_THREADS

    assert DEFAULT_INTRA_OP_THREADS == 1 == BuildOptions().intra_op_threads
    # A config written before the parameter existed: the runner falls back to the default.
    copy = tmp_path / "m" / "1"
    shutil.copytree(tiny_version.path, copy)
    config = (tiny_version.path.parent / "config.pbtxt").read_text(encoding="utf-8")
    lines = [line for line in config.splitlines() if "intra_op_threads" not in line]
    (tmp_path / "m" / "config.pbtxt").write_text("\n".join(lines), encoding="utf-8")
    session = _scheduler(copy).runner.session
    assert session.get_session_options().intra_op_num_threads == 1


@pytest.mark.parametrize("name", ["team:gpt", "my gpt", "../up", "-x", "a" * 129, ""])
def test_a_name_no_later_command_could_use_is_refused_before_anything_is_built(
    tmp_path: Path, name: str
) -> None:
    from genwire_model.build import BuildError

    with pytest.raises(BuildError, match="is not a model name: a letter or digit"):
        build_version(tmp_path / "no-checkpoint", name, tmp_path / "repo", BuildOptions())
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("interval", [0, -3])
def test_a_stream_interval_below_one_is_refused_not_changed(tmp_path: Path, interval: int) -> None:
    from genwire_model.build import BuildError

    with pytest.raises(BuildError, match=f"stream_interval .* must be >= 1, got {interval}"):
        build_version(
            tmp_path / "no-checkpoint",
            "m",
            tmp_path / "repo",
            BuildOptions(stream_interval=interval),
        )
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--name", "team:gpt"], "'team:gpt' is not a model name"),
        (["--stream-interval", "0"], "stream_interval (tokens per streamed response) must be"),
    ],
)
def test_the_build_command_refuses_them_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], said: str
) -> None:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    base = ["model", "build", "--checkpoint", str(tmp_path / "ckpt"), "--repository"]
    args = parser.parse_args([*base, str(tmp_path / "repo"), *flags])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("genwire model build: ") and said in err
    assert not (tmp_path / "repo").exists()
