"""Publishing to a REAL S3 API (moto's threaded server on 127.0.0.1), resume, retry, and no leaks.

moto's server mode is a real HTTP S3 endpoint: s3fs/aiobotocore sign and send real requests to it;
nothing in the client is patched. The retry test takes the server down, starts publishing, and brings
the server back on the same port while the upload is retrying.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from interlace.errors import InterlaceError
from interlace.runtime.progress import JsonlReporter
from interlace.schema.spec import HubOutput, OutputSpec
from interlace.stages.publish import publish_outputs
from interlace.stages.publish.retry import RetryPolicy
from interlace.stages.publish.transfer import s3_filesystem
from tests.cluster.testbed import free_port
from tests.publish.helpers import PLAN, job, results, same_logits, saved_pruned

ACCESS_KEY = "AKIAPLANTEDKEY7Q2X9Z"
SECRET_KEY = "planted/Secret+Value/x9QmZ7t3LkVw0PqR5sYb"
HF_TOKEN = "hf_plantedHubTokenQz81LmNp4RtV"
FAST = RetryPolicy(attempts=3, wait_initial=0.05, wait_max=0.2)


class MotoS3:
    def __init__(self) -> None:
        self.port = free_port()
        self.server: ThreadedMotoServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        """Stop serving AND close the listening socket (werkzeug's shutdown alone keeps accepting)."""
        if self.server is not None:
            inner = getattr(self.server, "_server", None)
            self.server.stop()
            if inner is not None:
                inner.server_close()
            self.server = None

    def client(self):  # type: ignore[no-untyped-def]
        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
        )


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    m = MotoS3()
    m.start()
    m.client().create_bucket(Bucket="models")
    yield m
    m.stop()


@pytest.fixture
def s3_env(moto: MotoS3, monkeypatch: pytest.MonkeyPatch) -> MotoS3:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto


def _keys(m: MotoS3, prefix: str) -> set[str]:
    out = m.client().list_objects_v2(Bucket="models", Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix) :] for o in out}


def test_s3_round_trip_and_resume(s3_env: MotoS3, tmp_path: Path) -> None:
    model_dir, pruned, _ = saved_pruned(tmp_path)
    (model_dir.parent / "plan.json").write_text(json.dumps(PLAN.to_wire()))
    res = results()
    spec = OutputSpec(uri="s3://models/runs/a")
    first = publish_outputs(model_dir, spec, plan=PLAN, results=res, job=job(), artifacts_dir=model_dir.parent)
    assert first.uri == "s3://models/runs/a/model" and res.output_uri == first.uri
    local_files = {p.name for p in model_dir.iterdir()}
    assert "README.md" in local_files
    assert _keys(s3_env, "runs/a/model/") == local_files
    assert _keys(s3_env, "runs/a/") >= {"results.json", "plan.json"}
    remote_results = json.loads(s3_env.client().get_object(Bucket="models", Key="runs/a/results.json")["Body"].read())
    assert remote_results["outputUri"] == "s3://models/runs/a/model"

    # Download with a fresh client and reload: same logits as the in-memory model.
    down = tmp_path / "down"
    s3_filesystem().get("models/runs/a/model/", str(down), recursive=True)
    same_logits(down, pruned)

    # Second publish: everything is already there.
    second = publish_outputs(model_dir, spec, plan=PLAN, results=res, job=job(), artifacts_dir=model_dir.parent)
    assert second.stats is not None and second.stats.uploaded == []
    assert set(second.stats.skipped) == local_files | {"results.json", "plan.json"}

    # An interrupted/damaged earlier upload: one object missing, one with the right size but wrong bytes.
    c = s3_env.client()
    c.delete_object(Bucket="models", Key="runs/a/model/config.json")
    size = (model_dir / "tokenizer_config.json").stat().st_size
    c.put_object(Bucket="models", Key="runs/a/model/tokenizer_config.json", Body=b"x" * size)
    third = publish_outputs(model_dir, spec, plan=PLAN, results=res, job=job())
    assert third.stats is not None
    assert sorted(third.stats.uploaded) == ["config.json", "tokenizer_config.json"]
    body = c.get_object(Bucket="models", Key="runs/a/model/tokenizer_config.json")["Body"].read()
    assert body == (model_dir / "tokenizer_config.json").read_bytes()


def test_s3_upload_retries_until_the_server_is_back(
    s3_env: MotoS3, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The server is down when publishing starts; it comes back when the first retry is announced."""
    model_dir, _, _ = saved_pruned(tmp_path)

    class Revive(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("retrying ") and s3_env.server is None:
                s3_env.start()

    revive = Revive(level=logging.WARNING)
    publog = logging.getLogger("interlace.stages.publish")
    s3_env.stop()
    publog.addHandler(revive)
    try:
        with caplog.at_level(logging.WARNING, logger="interlace.stages.publish"):
            out = publish_outputs(
                model_dir, OutputSpec(uri="s3://models/runs/retry"), plan=PLAN, results=results(), job=job(),
                retry=RetryPolicy(attempts=4, wait_initial=0.2, wait_max=1.0),
            )
    finally:
        publog.removeHandler(revive)
        if s3_env.server is None:
            s3_env.start()
    retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retrying ")]
    assert len(retries) == 1, retries
    assert "attempt 1 of 4 failed: EndpointConnectionError" in retries[0]
    assert out.stats is not None and len(out.stats.uploaded) == len(list(model_dir.iterdir())) + 1
    assert _keys(s3_env, "runs/retry/model/") == {p.name for p in model_dir.iterdir()}


def test_permanent_errors_are_not_retried(s3_env: MotoS3, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model_dir, _, _ = saved_pruned(tmp_path)
    with caplog.at_level(logging.WARNING, logger="interlace.stages.publish"), pytest.raises(FileNotFoundError):
        publish_outputs(model_dir, OutputSpec(uri="s3://no-such-bucket/x"), plan=PLAN, job=job(),
                        retry=RetryPolicy(attempts=5, wait_initial=2.0))
    assert not [r for r in caplog.records if r.getMessage().startswith("retrying ")]


def test_no_credential_in_logs_status_events_or_card(
    s3_env: MotoS3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    secrets = (ACCESS_KEY, SECRET_KEY, HF_TOKEN)
    model_dir, _, _ = saved_pruned(tmp_path)
    log_file = tmp_path / "debug.log"
    fh = logging.FileHandler(log_file)
    fh.setLevel(logging.DEBUG)
    fh.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    stream = logging.StreamHandler()  # stderr, captured by capfd
    stream.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(fh)
    root.addHandler(stream)
    reporter = JsonlReporter(tmp_path / "progress.jsonl")
    res = results()
    err_text = ""
    try:
        with caplog.at_level(logging.DEBUG):
            # A library that logs a credential verbatim must be masked too.
            logging.getLogger("some.library").debug("config: key=%s secret=%s", ACCESS_KEY, SECRET_KEY)
            try:
                publish_outputs(
                    model_dir,
                    OutputSpec(uri="s3://models/runs/secret", hub=HubOutput(repo="my-org/secret-test")),
                    plan=PLAN, results=res, job=job(), retry=FAST,
                )
            except InterlaceError as err:  # the Hub is unreachable here (HF_HUB_OFFLINE=1)
                err_text = str(err)
        reporter.results(res)
        reporter.close()
    finally:
        root.removeHandler(fh)
        root.removeHandler(stream)
        fh.close()
    assert "HF_HUB_OFFLINE" in err_text  # S3 done, then the Hub step failed cleanly
    out, err = capfd.readouterr()
    remote_card = s3_env.client().get_object(Bucket="models", Key="runs/secret/model/README.md")["Body"].read()
    remote_results = s3_env.client().get_object(Bucket="models", Key="runs/secret/results.json")["Body"].read()
    haystacks = {
        "caplog": caplog.text,
        "log file": log_file.read_text(),
        "stdout": out,
        "stderr": err,
        "card": (model_dir / "README.md").read_text(),
        "remote card": remote_card.decode(),
        "remote results.json": remote_results.decode(),
        "status results": json.dumps(res.to_wire()),
        "events": (tmp_path / "progress.jsonl").read_text(),
        "error": err_text,
    }
    # The test can fail: DEBUG logging really carried credentials (masked), so the filter was exercised.
    assert "key=*** secret=***" in haystacks["log file"]
    assert len(haystacks["caplog"]) > 1000  # botocore/s3fs DEBUG output was captured
    for name, text in haystacks.items():
        for s in secrets:
            assert s not in text, f"{name} contains a planted credential"
