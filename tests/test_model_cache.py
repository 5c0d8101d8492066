"""The model cache: its API, the fill Job and the filler, the controller's decisions, and how a
deployment is served from it. All offline; the API server's side is in e2e/test_model_cache.py."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from k2think_operator import cachefill
from k2think_operator.api import reasons as r
from k2think_operator.api.crd import build_cache_crd
from k2think_operator.api.modelcache import parse_cache_spec
from k2think_operator.api.spec import InvalidSpec
from k2think_operator.cli import main
from k2think_operator.deployment.cache import CacheView, cache_view
from k2think_operator.deployment.controller import DeploymentReconciler
from k2think_operator.deployment.decide import decide
from k2think_operator.modelcache.decide import decide_cache
from k2think_operator.modelcache.jobs import (
    build_claim,
    build_fill_job,
    fill_job_name,
    fill_report,
    job_state,
)
from k2think_operator.render import render_yaml
from tests.conftest import ROOT, minimal_doc
from tests.test_reconcile import RecordingKube

NOW = "2026-12-01T20:00:00Z"
SHA_A = "a" * 40
SHA_B = "b" * 40


def cache_doc(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "k2think.dev/v1alpha1",
        "kind": "K2ThinkModelCache",
        "metadata": {"name": "k2", "namespace": "team-a", "uid": "cache-uid", "generation": 1},
        "spec": {
            "source": "hf://LLM360/K2-Think",
            "revision": SHA_A,
            "storage": {"storageClassName": "nfs", "size": "200Gi"},
        },
    }
    base["spec"].update(spec)
    return base


# --- API -----------------------------------------------------------------------------------------


def test_committed_cache_crd_matches_code() -> None:
    path = ROOT / "crds" / "k2think.dev_k2thinkmodelcaches.yaml"
    assert path.read_text() == render_yaml([build_cache_crd()]), "run `make crds`"
    chart = ROOT / "charts" / "k2think-operator" / "crds" / path.name
    assert chart.read_text() == path.read_text()


def test_cache_crd_identity_and_columns() -> None:
    crd = build_cache_crd()
    assert crd["metadata"]["name"] == "k2thinkmodelcaches.k2think.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    (version,) = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Source", "Revision", "Claim", "Status", "Age"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert set(spec["properties"]) == {
        "source",
        "revision",
        "storage",
        "downloader",
        "revisionsToKeep",
    }
    storage = spec["properties"]["storage"]
    assert storage["x-kubernetes-validations"][0]["rule"] == "has(self.claimName) || has(self.size)"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"source": "pvc://claim/x"}, "spec.source"),
        ({"source": "hf://only-org"}, "spec.source"),
        ({"source": "file://relative"}, "spec.source"),
        ({"revision": "feature/x"}, "spec.revision"),
        ({"storage": {}}, "spec.storage"),
        ({"revisionsToKeep": 0}, "spec.revisionsToKeep"),
    ],
)
def test_bad_cache_specs_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_cache_spec(cache_doc(**change)["spec"])
    assert [p.field for p in caught.value.problems] == [field]


# --- the filler ------------------------------------------------------------------------------


def make_model(root: Path) -> Path:
    source = root / "src" / "tiny"
    (source / "sub").mkdir(parents=True)
    (source / "config.json").write_text('{"model_type": "llama"}')
    (source / "model.safetensors").write_bytes(b"\0" * 1000)
    (source / "sub" / "tokenizer.json").write_text("{}")
    return source


def test_download_commands_are_the_hubs_own_clients(tmp_path: Path) -> None:
    dest = tmp_path / "d"
    hf = cachefill.download_command(
        cachefill.parse_source("hf://LLM360/K2-Think"), SHA_A, dest, ["*.json"], 4
    )
    assert hf == [
        "hf", "download", "LLM360/K2-Think", "--revision", SHA_A, "--local-dir", str(dest),
        "--include", "*.json", "--max-workers", "4",
    ]  # fmt: skip
    s3 = cachefill.download_command(cachefill.parse_source("s3://b/p"), "v1", dest, [], 4)
    assert s3 == ["aws", "s3", "sync", "s3://b/p/", str(dest)]
    gs = cachefill.download_command(cachefill.parse_source("gs://b/p"), "v1", dest, [], 4)
    assert gs[:3] == ["gcloud", "storage", "cp"]
    cp = cachefill.download_command(cachefill.parse_source("file:///m/x"), "v1", dest, [], 4)
    assert cp == ["cp", "-a", "/m/x/.", str(dest)]


def test_fill_from_a_file_source_verifies_renames_and_writes_the_manifest(tmp_path: Path) -> None:
    source = make_model(tmp_path)
    root = tmp_path / "cache"
    request = cachefill.Request(source=f"file://{source}", revision="v1", root=root)
    result = cachefill.fill(request)
    model_dir = "--".join(source.parts[1:])
    target = root / model_dir / "v1"
    assert result["path"] == f"{model_dir}/v1" and result["files"] == 3
    assert not (root / model_dir / "v1.partial").exists()
    manifest = json.loads((target / cachefill.MANIFEST).read_text())
    assert manifest["files"] == {
        "config.json": 23,
        "model.safetensors": 1000,
        "sub/tokenizer.json": 2,
    }
    assert (target / "model.safetensors").stat().st_size == 1000


def test_a_complete_revision_is_not_downloaded_again(tmp_path: Path) -> None:
    source = make_model(tmp_path)
    request = cachefill.Request(source=f"file://{source}", revision="v1", root=tmp_path / "c")
    cachefill.fill(request)
    calls: list[list[str]] = []

    def recording(argv: list[str]) -> str:
        calls.append(argv)
        return ""

    cachefill.fill(request, run=recording)
    assert calls == []


def test_a_short_file_is_a_verify_failure_and_nothing_is_published(tmp_path: Path) -> None:
    source = make_model(tmp_path)
    root = tmp_path / "c"

    def truncating(argv: list[str]) -> str:
        out = cachefill.run_command(argv)
        dest = Path(argv[-1])
        (dest / "model.safetensors").write_bytes(b"\0" * 10)
        return out

    request = cachefill.Request(source=f"file://{source}", revision="v1", root=root)
    with pytest.raises(cachefill.FillError) as caught:
        cachefill.fill(request, run=truncating)
    assert caught.value.reason == cachefill.VERIFY_FAILED
    assert "model.safetensors: 10 bytes, the index says 1000" in str(caught.value)
    model_root = root / "--".join(source.parts[1:])
    assert not (model_root / "v1").exists() and (model_root / "v1.partial").exists()


def test_main_writes_the_report_to_the_termination_log(tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    code = cachefill.main(
        ["--source", "file:///nonexistent", "--revision", "v1", "--root", str(tmp_path),
         "--termination-log", str(log)]
    )  # fmt: skip
    assert code == cachefill.EXIT_DOWNLOAD_FAILED
    assert json.loads(log.read_text())["reason"] == r.DOWNLOAD_FAILED
    source = make_model(tmp_path)
    code = cachefill.main(
        ["--source", f"file://{source}", "--revision", "v2", "--root", str(tmp_path / "c"),
         "--termination-log", str(log)]
    )  # fmt: skip
    assert code == 0 and json.loads(log.read_text())["commit"] == "v2"


def test_old_revisions_beyond_keep_are_pruned_unless_in_use(tmp_path: Path) -> None:
    source = make_model(tmp_path)
    root = tmp_path / "c"
    for i, revision in enumerate(["v1", "v2", "v3"]):
        request = cachefill.Request(
            source=f"file://{source}", revision=revision, root=root, keep=2, in_use=("v1",)
        )
        result = cachefill.fill(request)
        manifest = root / "--".join(source.parts[1:]) / revision / cachefill.MANIFEST
        os.utime(manifest, (1000 + i, 1000 + i))
    model_root = root / "--".join(source.parts[1:])
    assert sorted(p.name for p in model_root.iterdir()) == ["v1", "v2", "v3"]  # v1 in use
    result = cachefill.fill(
        cachefill.Request(source=f"file://{source}", revision="v3", root=root, keep=2)
    )
    assert result["removed"] == ["v1"]
    assert sorted(p.name for p in model_root.iterdir()) == ["v2", "v3"]


# --- the controller's decisions --------------------------------------------------------------


def bound_claim() -> dict[str, Any]:
    return {"metadata": {"name": "k2-weights"}, "status": {"phase": "Bound"}}


def job(condition: str | None) -> dict[str, Any]:
    conds = [{"type": condition, "status": "True", "reason": "BackoffLimitExceeded"}]
    return {"metadata": {"name": "j"}, "status": {"conditions": conds if condition else []}}


def cache_ready(decision_status: dict[str, Any]) -> dict[str, Any]:
    (cond,) = [c for c in decision_status["conditions"] if c["type"] == r.CACHE_READY]
    return dict(cond)


def test_fill_job_is_deterministic_and_named_per_revision() -> None:
    spec = parse_cache_spec(cache_doc()["spec"])
    first = build_fill_job(spec, name="k2", namespace="team-a", uid="u")
    assert first == build_fill_job(spec, name="k2", namespace="team-a", uid="u")
    other = parse_cache_spec(cache_doc(revision=SHA_B)["spec"])
    assert fill_job_name("k2", spec) != fill_job_name("k2", other)
    assert len(fill_job_name("x" * 253, spec)) <= 63
    pod = first["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:3] == ["python", "-m", "k2think_operator.cachefill"]
    assert container["terminationMessagePolicy"] == "File"
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "k2-weights"}
    assert first["spec"]["backoffLimit"] == 3 and pod["restartPolicy"] == "Never"
    claim = build_claim(spec, name="k2", namespace="team-a")
    assert claim is not None and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "nfs"
    existing = parse_cache_spec(cache_doc(storage={"claimName": "mine"})["spec"])
    assert build_claim(existing, name="k2", namespace="team-a") is None


def test_no_claim_creates_it_and_waits() -> None:
    decision = decide_cache(cache_doc(), None, None, None, NOW)
    assert decision.claim_to_create is not None and decision.job_to_create is None
    assert cache_ready(decision.status)["reason"] == r.CLAIM_PENDING


def test_a_claim_without_a_job_starts_the_fill() -> None:
    decision = decide_cache(cache_doc(), bound_claim(), None, None, NOW)
    assert decision.job_to_create is not None
    assert cache_ready(decision.status)["reason"] == r.CACHE_DOWNLOADING
    assert decision.status["fillJob"] == decision.job_to_create["metadata"]["name"]


def test_an_active_job_is_downloading_or_waits_for_the_claim() -> None:
    decision = decide_cache(cache_doc(), bound_claim(), job(None), None, NOW)
    assert decision.job_to_create is None
    assert cache_ready(decision.status)["reason"] == r.CACHE_DOWNLOADING
    pending = {"status": {"phase": "Pending"}}
    decision = decide_cache(cache_doc(), pending, job(None), None, NOW)
    assert cache_ready(decision.status)["reason"] == r.CLAIM_PENDING


def test_a_failed_job_reports_its_reason_and_is_not_recreated() -> None:
    report = {"reason": r.VERIFY_FAILED, "message": "1 file(s) differ"}
    decision = decide_cache(cache_doc(), bound_claim(), job("Failed"), report, NOW)
    assert decision.job_to_create is None
    cond = cache_ready(decision.status)
    assert (cond["status"], cond["reason"]) == ("False", r.VERIFY_FAILED)
    assert "1 file(s) differ" in cond["message"]
    plain = decide_cache(cache_doc(), bound_claim(), job("Failed"), None, NOW)
    assert cache_ready(plain.status)["reason"] == r.DOWNLOAD_FAILED


def test_a_complete_job_makes_the_revision_ready_and_records_a_resolved_branch() -> None:
    doc = cache_doc(revision="main")
    report = {"reason": "Ready", "commit": SHA_B}
    decision = decide_cache(doc, bound_claim(), job("Complete"), report, NOW)
    assert decision.ready
    status = decision.status
    assert status["currentRevision"] == SHA_B and status["readyRevisions"] == [SHA_B]
    assert status["resolvedRevisions"] == [{"requested": "main", "commit": SHA_B}]
    assert status["path"] == f"LLM360--K2-Think/{SHA_B}"
    # Once recorded, the branch is not resolved again and no Job is needed (scale-ups, resyncs).
    doc["status"] = status
    again = decide_cache(doc, bound_claim(), None, None, NOW)
    assert again.ready and again.job_to_create is None


def test_a_new_revision_keeps_serving_the_old_one_until_it_is_ready() -> None:
    doc = cache_doc()
    done = decide_cache(doc, bound_claim(), job("Complete"), None, NOW)
    doc = cache_doc(revision=SHA_B)
    doc["status"] = done.status
    started = decide_cache(doc, bound_claim(), None, None, NOW)
    assert started.job_to_create is not None and not started.ready
    assert started.status["currentRevision"] == SHA_A
    assert (
        "--in-use" in started.job_to_create["spec"]["template"]["spec"]["containers"][0]["command"]
    )
    doc["status"] = started.status
    finished = decide_cache(doc, bound_claim(), job("Complete"), None, NOW)
    assert finished.status["currentRevision"] == SHA_B
    assert finished.status["readyRevisions"] == [SHA_B, SHA_A]


def test_fill_report_reads_the_newest_termination_message() -> None:
    def pod(at: str, message: str) -> dict[str, Any]:
        term = {"finishedAt": at, "message": message}
        return {"status": {"containerStatuses": [{"state": {"terminated": term}}]}}

    pods = [pod("2026-01-01T00:00:02Z", '{"reason": "Ready"}'), pod("2026-01-01T00:00:01Z", "{}")]
    assert fill_report(pods) == {"reason": "Ready"}
    assert fill_report([pod("x", "not json")]) is None
    assert job_state(None) == "Missing" and job_state(job("Complete")) == "Complete"


# --- serving from the cache ------------------------------------------------------------------

VIEW = CacheView("k2", "k2-weights", f"LLM360--K2-Think/{SHA_A}", SHA_A)


def cached_doc() -> dict[str, Any]:
    return minimal_doc(model={"preset": "k2-think", "cacheRef": "k2"})


def test_without_a_ready_cache_nothing_is_rendered() -> None:
    decision = decide(cached_doc(), None, "not yet")
    assert decision.children == () and decision.problems == ()
    assert decision.waiting_for_cache == "not yet" and decision.plan is not None


def test_with_a_ready_cache_workers_mount_it_read_only_and_stay_offline() -> None:
    (rayservice,) = [c for c in decide(cached_doc(), VIEW).children if c["kind"] == "RayService"]
    serve = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    llm = serve["applications"][0]["args"]["llm_configs"][0]
    path = f"/mnt/models/k2-weights/LLM360--K2-Think/{SHA_A}"
    assert llm["model_loading_config"]["model_source"] == path
    assert llm["model_loading_config"]["model_id"] == "LLM360/K2-Think"
    assert "revision" not in llm["engine_kwargs"]
    worker = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    (volume,) = [v for v in worker["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"] == {"claimName": "k2-weights", "readOnly": True}
    env = {e["name"]: e["value"] for e in worker["containers"][0]["env"]}
    assert env["HF_HUB_OFFLINE"] == "1"


def test_cache_view_follows_the_current_revision_only() -> None:
    assert cache_view(None) is None
    assert cache_view(cache_doc()) is None
    done = decide_cache(cache_doc(), bound_claim(), job("Complete"), None, NOW)
    ready = {**cache_doc(), "status": done.status}
    assert cache_view(ready) == VIEW


async def test_a_deployment_waits_for_its_cache_then_serves_from_it() -> None:
    kube = RecordingKube()
    reconciler = DeploymentReconciler(kube)
    outcome = await reconciler.converge(cached_doc(), [])
    assert kube.applies == [] and not outcome.invalid
    (cond,) = [c for c in outcome.status["conditions"] if c["type"] == r.CACHE_READY]
    assert (cond["status"], cond["reason"]) == ("False", r.CACHE_NOT_READY)
    assert "does not exist" in cond["message"]
    assert outcome.status["phase"] == "WaitingForCache"
    done = decide_cache(cache_doc(), bound_claim(), job("Complete"), None, NOW)
    kube.caches[("team-a", "k2")] = {**cache_doc(), "status": done.status}
    outcome = await reconciler.converge(cached_doc(), [])
    assert len(kube.applies) == 1
    (cond,) = [c for c in outcome.status["conditions"] if c["type"] == r.CACHE_READY]
    assert cond["status"] == "True"


def test_offline_render_shows_the_deployment_as_it_runs_once_the_cache_is_ready(
    tmp_path: Path,
) -> None:
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump_all([cache_doc(), cached_doc()]))
    out, err = io.StringIO(), io.StringIO()
    assert main(["render", "-f", str(path)], out, err) == 0, err.getvalue()
    assert f"/mnt/models/k2-weights/LLM360--K2-Think/{SHA_A}" in out.getvalue()
    out = io.StringIO()
    assert main(["validate", "-f", str(path)], out, err) == 0
    assert out.getvalue().count("valid") == 2
    alone = tmp_path / "alone.yaml"
    alone.write_text(yaml.safe_dump(cached_doc()))
    err = io.StringIO()
    assert main(["render", "-f", str(alone)], io.StringIO(), err) == 1
    assert "no K2ThinkModelCache named k2" in err.getvalue()


def test_the_campus_cache_example_is_shared_by_both_models() -> None:
    path = ROOT / "crds" / "examples" / "model-cache" / "k2think-campus-cache.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    caches = {d["metadata"]["name"]: d for d in docs if d["kind"] == "K2ThinkModelCache"}
    assert {c["spec"]["storage"]["claimName"] for c in caches.values()} == {"k2think-weights"}
    deployments = [d for d in docs if d["kind"] == "K2ThinkDeployment"]
    assert {d["spec"]["model"]["preset"] for d in deployments} == {"k2-think", "k2-think-v2"}
    out, err = io.StringIO(), io.StringIO()
    assert main(["validate", "-f", str(path)], out, err) == 0, err.getvalue()
    assert main(["render", "-f", str(path)], out, err) == 0, err.getvalue()
    assert "/mnt/models/k2think-weights/LLM360--K2-Think-V2/main" in out.getvalue()


def test_deployments_are_woken_when_the_served_revision_or_readiness_moves() -> None:
    from k2think_operator.modelcache.controller import revision_moved

    first = decide_cache(cache_doc(), None, None, None, NOW)
    assert revision_moved({}, first)  # claimName appears
    assert not revision_moved(first.status, decide_cache(cache_doc(), None, None, None, NOW))
    done = decide_cache(cache_doc(), bound_claim(), job("Complete"), None, NOW)
    assert revision_moved(first.status, done)
    failed = decide_cache(cache_doc(), bound_claim(), job("Failed"), None, NOW)
    assert revision_moved(first.status, failed)  # the reason the deployments quote changed


def draft_cache_doc() -> dict[str, Any]:
    doc = cache_doc(source="hf://Qwen/Qwen2.5-7B-Instruct")
    doc["metadata"] = {**doc["metadata"], "name": "qwen-draft", "uid": "draft-uid"}
    return doc


def drafted_doc() -> dict[str, Any]:
    speculative = {
        "method": "draftModel",
        "numSpeculativeTokens": 4,
        "draft": {"preset": "qwen2.5-7b-instruct", "cacheRef": "qwen-draft"},
    }
    doc = cached_doc()
    doc["spec"]["engine"] = {"speculativeDecoding": speculative}
    return doc


async def test_a_deployment_waits_for_its_draft_cache_too_then_serves_from_both() -> None:
    kube = RecordingKube()
    reconciler = DeploymentReconciler(kube)
    done = decide_cache(cache_doc(), bound_claim(), job("Complete"), None, NOW)
    kube.caches[("team-a", "k2")] = {**cache_doc(), "status": done.status}
    outcome = await reconciler.converge(drafted_doc(), [])
    assert kube.applies == []
    (cond,) = [c for c in outcome.status["conditions"] if c["type"] == r.CACHE_READY]
    assert cond["status"] == "False"
    assert (
        cond["message"]
        == "K2ThinkModelCache qwen-draft (the draft) does not exist in this namespace"
    )
    drafted = decide_cache(draft_cache_doc(), bound_claim(), job("Complete"), None, NOW)
    kube.caches[("team-a", "qwen-draft")] = {**draft_cache_doc(), "status": drafted.status}
    outcome = await reconciler.converge(drafted_doc(), [])
    assert len(kube.applies) == 1
    (cond,) = [c for c in outcome.status["conditions"] if c["type"] == r.CACHE_READY]
    assert cond["status"] == "True"
    assert "; the draft from revision " in cond["message"]
    assert "of K2ThinkModelCache qwen-draft from " in cond["message"]


def test_offline_validate_resolves_the_draft_cache_from_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "drafted.yaml"
    path.write_text(yaml.safe_dump_all([cache_doc(), draft_cache_doc(), drafted_doc()]))
    out, err = io.StringIO(), io.StringIO()
    assert main(["render", "-f", str(path)], out, err) == 0, err.getvalue()
    # Its own claim (the cache's default, NAME-weights), mounted beside the model's.
    assert f"model: /mnt/models/qwen-draft-weights/Qwen--Qwen2.5-7B-Instruct/{SHA_A}" in (
        out.getvalue()
    )
    assert "mountPath: /mnt/models/k2-weights" in out.getvalue()
    without = tmp_path / "without.yaml"
    without.write_text(yaml.safe_dump_all([cache_doc(), drafted_doc()]))
    err = io.StringIO()
    assert main(["validate", "-f", str(without)], io.StringIO(), err) == 1
    assert (
        "spec.engine.speculativeDecoding.draft.cacheRef: no K2ThinkModelCache named qwen-draft "
        "in the file"
    ) in err.getvalue()
