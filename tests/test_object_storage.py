"""Runs whose manifest, audio and output live in an S3-compatible store (moto's server on 127.0.0.1).

The store is real (HTTP, signed requests, s3fs and botocore as in production); only its host is local.
Credentials are dummies and `AWS_ENDPOINT_URL` points at the server, so nothing reaches AWS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cotaforge.errors import ConfigError, CotaforgeError

pytestmark = pytest.mark.integration

moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (dev extra)")
s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed (extra 's3')")

ROOT = Path(__file__).resolve().parents[1]
# 20 drum hits in 4 batches of 5 and a few scenes: several parts per stage, scenes with audio of their own.
RUN_FLAGS = ["--name", "drums", "--batch-size", "5", "--set", "compose.scenes=12"]
STAGES = ("ingest", "compose", "caption", "expand", "validate", "balance", "publish")


@pytest.fixture(scope="module")
def store():
    """The S3-compatible server and the environment that points s3fs at it."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        for bucket in ("inputs", "outputs"):
            fs.mkdir(bucket)
        yield env, fs
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def _env(home: Path, store_env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **store_env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_HOME": str(home / ".prefect"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def run_cli(*args, home: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cotaforge.cli", *map(str, args)], cwd=home, capture_output=True,
                          text=True, env=_env(home, env), timeout=400)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def local_digest(dataset: Path) -> dict[str, str]:
    return {p.name: _sha256(p.read_bytes()) for p in sorted((dataset / "data").glob("*.parquet"))}


def remote_digest(fs, dataset: str) -> dict[str, str]:
    return {key.rsplit("/", 1)[1]: _sha256(fs.cat_file(key)) for key in sorted(fs.glob(f"{dataset}/data/*.parquet"))}


def stage_reports(fs, run: str) -> dict[str, dict]:
    report = json.loads(fs.cat_file(f"{run}/report.json"))
    return {stage["stage"]: stage for stage in report["stages"]}


@pytest.fixture(scope="module")
def inputs(store, drums_manifest) -> str:
    """The drum hits' manifest and audio copied into the `inputs` bucket; the manifest's URL. The folder keeps
    its name, which names the source dataset, so the samples are those of a local run."""
    _, fs = store
    folder = drums_manifest.parent
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"inputs/{folder.name}/{path.relative_to(folder).as_posix()}")
    return f"s3://inputs/{folder.name}/manifest.csv"


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, drums_manifest, store) -> Path:
    """The same run on local disk: the reference dataset."""
    home = tmp_path_factory.mktemp("local")
    result = run_cli("run", "--manifest", drums_manifest, "--out", home / "out", *RUN_FLAGS, home=home, env=store[0])
    assert result.returncode == 0, result.stderr[-3000:]
    return home / "out" / "datasets" / "drums" / "v1"


@pytest.fixture(scope="module")
def s3_run(tmp_path_factory, store, inputs) -> str:
    """`cotaforge run` with the manifest, the audio and --out in buckets; the run's out URL."""
    home = tmp_path_factory.mktemp("s3run")
    result = run_cli("run", "--manifest", inputs, "--out", "s3://outputs/cf", *RUN_FLAGS, home=home, env=store[0])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Dataset: s3://outputs/cf/datasets/drums/v1" in result.stdout
    return "s3://outputs/cf"


def test_datasets_loads_every_split_from_the_bucket(tmp_path, store, s3_run):
    datasets = pytest.importorskip("datasets")
    from cotaforge.stages.publish import dataset_files

    env, fs = store
    version = f"{s3_run}/datasets/drums/v1"
    manifest = json.loads(fs.cat_file(f"{version}/manifest.json"))
    files = dataset_files(version)
    assert set(files) == {s for s, n in manifest["rows"].items() if n}
    options = {"key": env["AWS_ACCESS_KEY_ID"], "secret": env["AWS_SECRET_ACCESS_KEY"],
               "client_kwargs": {"endpoint_url": env["AWS_ENDPOINT_URL"]}}
    loaded = datasets.load_dataset("parquet", data_files=files, storage_options=options, cache_dir=str(tmp_path))
    for split, ds in loaded.items():
        assert ds.num_rows == manifest["rows"][split] > 0
        row = ds[0]
        assert row["audio"]["sampling_rate"] == 16000 and len(row["audio"]["array"]) > 1000
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    # The run directory went to the bucket too, with no temporaries left anywhere in it.
    keys = fs.find("outputs/cf/runs/drums")
    assert "outputs/cf/runs/drums/manifest.parquet" in keys and "outputs/cf/runs/drums/expand/part-00003.parquet" in keys
    assert not [k for k in keys if k.endswith(".tmp")]


def test_shards_equal_a_local_run_of_the_same_input(store, s3_run, local_run):
    _, fs = store
    expected = local_digest(local_run)
    assert expected and remote_digest(fs, "outputs/cf/datasets/drums/v1") == expected


def test_rerun_does_no_work_and_a_deleted_part_redoes_only_its_batch(tmp_path, store, inputs, s3_run):
    env, fs = store
    shards = {k: fs.info(k)["LastModified"] for k in fs.glob("outputs/cf/datasets/drums/v1/data/*.parquet")}
    again = run_cli("run", "--manifest", inputs, "--out", s3_run, *RUN_FLAGS, home=tmp_path, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    fs.invalidate_cache()
    reports = stage_reports(fs, "outputs/cf/runs/drums")
    assert all(reports[s]["parts_done"] == 0 for s in STAGES), {s: reports[s]["parts_done"] for s in STAGES}
    assert {k: fs.info(k)["LastModified"] for k in shards} == shards

    fs.rm("outputs/cf/runs/drums/expand/part-00002.parquet")
    third = run_cli("run", "--manifest", inputs, "--out", s3_run, *RUN_FLAGS, home=tmp_path, env=env)
    assert third.returncode == 0, third.stderr[-3000:]
    fs.invalidate_cache()
    reports = stage_reports(fs, "outputs/cf/runs/drums")
    assert reports["expand"]["parts_done"] == 1 and reports["expand"]["parts_skipped"] == 3
    assert all(reports[s]["parts_done"] == 0 for s in STAGES if s != "expand")
    assert fs.exists("outputs/cf/runs/drums/expand/part-00002.parquet")


@pytest.mark.parametrize("where, says", [
    ("--out s3://no-such-bucket/cf", ["s3://no-such-bucket/cf", "does not exist"]),
    ("--manifest s3://no-such-bucket/m.csv", ["s3://no-such-bucket/m.csv", "does not exist"]),
    ("--out foo://bucket/cf", ["foo://bucket/cf", "no fsspec filesystem"]),
])
def test_missing_bucket_or_unknown_protocol_exits_2_naming_the_url(tmp_path, store, inputs, drums_manifest, where,
                                                                   says):
    flag, url = where.split()
    manifest = url if flag == "--manifest" else inputs
    out = url if flag == "--out" else "s3://outputs/never"
    result = run_cli("run", "--manifest", manifest, "--out", out, *RUN_FLAGS, home=tmp_path, env=store[0])
    assert result.returncode == 2, result.stderr[-3000:]
    message = " ".join(result.stderr.split())
    assert all(text in message for text in says), message
    assert "Traceback" not in result.stderr


def test_missing_credentials_exit_2_and_say_what_to_set(tmp_path, store, inputs):
    env = {k: v for k, v in store[0].items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    bare = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    result = subprocess.run([sys.executable, "-m", "cotaforge.cli", "run", "--manifest", inputs, "--out",
                             "s3://outputs/nocreds", *RUN_FLAGS], cwd=tmp_path, capture_output=True, text=True,
                            timeout=400, env={**bare, **env, "PREFECT_HOME": str(tmp_path / ".prefect"),
                                              "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr[-3000:]
    message = " ".join(result.stderr.split())
    assert "s3://outputs/nocreds" in message and "AWS_ACCESS_KEY_ID" in message, message


def test_dask_workers_write_to_the_bucket(tmp_path, store, inputs, local_run):
    pytest.importorskip("distributed", reason="dask[distributed] is not installed")
    env, fs = store
    result = run_cli("run", "--manifest", inputs, "--out", "s3://outputs/dask", *RUN_FLAGS, "--executor", "dask",
                     "--workers", "2", home=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    fs.invalidate_cache()
    assert remote_digest(fs, "outputs/dask/datasets/drums/v1") == local_digest(local_run)


def test_a_stopped_publish_leaves_no_complete_version_and_the_next_one_finishes(store, s3_run, monkeypatch):
    """A publish replacing the version dies before its manifest.json: the version reads as incomplete, and the
    next publish completes it and removes the objects the new version does not have."""
    from cotaforge.config import RunConfig
    from cotaforge.stages import publish
    from cotaforge.store import RunDir

    _, fs = store
    version = "outputs/cf/datasets/drums/v1"
    cfg = RunConfig.model_validate(json.loads(json.dumps(_stored_config(fs))))
    cfg = cfg.model_copy(update={"publish": cfg.publish.model_copy(update={"shard_rows": 7})})
    run = RunDir.for_config(cfg)
    upload = publish.put_file

    def dies_at_the_manifest(local, path):
        if path.name == "manifest.json":
            raise OSError("connection lost")
        upload(local, path)

    monkeypatch.setattr(publish, "put_file", dies_at_the_manifest)
    with pytest.raises(OSError):
        publish.run_publish(run, cfg)
    fs.invalidate_cache()
    assert not fs.exists(f"{version}/manifest.json")
    with pytest.raises(CotaforgeError, match="no manifest.json"):
        publish.dataset_files(f"s3://{version}")

    monkeypatch.setattr(publish, "put_file", upload)
    report = publish.run_publish(run, cfg)
    assert report.parts_done == 1
    fs.invalidate_cache()
    manifest = json.loads(fs.cat_file(f"{version}/manifest.json"))
    listed = {f"{version}/{s['path']}" for s in manifest["shards"]}
    assert set(fs.glob(f"{version}/data/*")) == listed and all(s["rows"] <= 7 for s in manifest["shards"])
    for shard in manifest["shards"]:
        assert _sha256(fs.cat_file(f"{version}/{shard['path']}")) == shard["sha256"]
    assert sum(pq.ParquetFile(fs.open(key)).metadata.num_rows for key in listed) == sum(manifest["rows"].values())


def _stored_config(fs) -> dict:
    import yaml

    return yaml.safe_load(fs.cat_file("outputs/cf/runs/drums/config.yaml"))


def test_a_parquet_dataset_in_a_bucket_is_an_input(store, local_run):
    """A folder of Hugging Face Parquet shards at a URL: its rows are read through fsspec, and each row's
    audio is taken from its shard's cell."""
    from cotaforge.config import InputSection
    from cotaforge.manifest import read_inputs
    from cotaforge.stages.ingest import _decode

    _, fs = store
    shard = sorted((local_run / "data").glob("*.parquet"))[0]
    fs.put_file(str(shard), f"inputs/published/data/{shard.name}")
    read = read_inputs(InputSection(manifests=["s3://inputs/published"], label_column="class_label"))
    rows = pq.read_table(shard, columns=["class_label", "audio"]).to_pylist()
    assert len(read.rows) == len(rows) and read.rows[0].resolved_path == f"s3://inputs/published/data/{shard.name}"
    assert [r.labels for r in read.rows[:5]] == [[row["class_label"]] for row in rows[:5]]
    decoded = _decode(read.rows[3])
    assert decoded.original_sample_rate_hz == 16000 and len(decoded.samples) > 1000


def test_locations(tmp_path):
    from cotaforge.location import is_remote, location

    assert location(str(tmp_path)) == tmp_path and type(location(str(tmp_path))) is type(tmp_path)
    assert location(f"file://{tmp_path}") == tmp_path and not is_remote(location("relative/dir"))
    memory = location("memory://bucket/run")
    assert is_remote(memory) and str(memory / "a" / "b.parquet") == "memory://bucket/run/a/b.parquet"
    with pytest.raises(ConfigError, match="no fsspec filesystem is known for 'nosuch://'"):
        location("nosuch://bucket/x")
    try:
        import gcsfs  # noqa: F401
    except ImportError:  # the optional extra is not installed here: the error says which one to install
        with pytest.raises(ConfigError, match=r"gs://bucket/x: .*pip install 'cotaforge\[gcs\]'"):
            location("gs://bucket/x")
