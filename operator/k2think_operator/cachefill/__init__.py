"""Fill one revision of a model cache: download, verify every file's size, publish atomically.

Runs inside the fill Job (``python -m k2think_operator.cachefill ...``; ``cachejob.py`` builds
the Job). The download itself is the hub's own client (``hf download`` from huggingface_hub,
``aws s3 sync``, ``gcloud storage cp``, or ``cp -a`` for a ``file://`` source): they already do
parallel transfers, resumption and authentication. What they do not do is the part the cache's
readiness depends on, so it is here, small and unit-tested:

* the files go to ``<root>/<ORG--NAME>/<commit>.partial``; nothing reads that path;
* every file of the index (the hub's file list with sizes, ``HfApi.list_repo_tree``; the source
  tree for ``file://``; the bucket listing for s3/gs) must be there with its size;
* a manifest ``.k2think-complete.json`` (files and sizes) is written, then the directory is
  renamed to ``<commit>/`` in one ``rename(2)``: a replica that sees ``<commit>/`` sees all of it;
* the resolved commit (a branch or tag is resolved once, here) and the outcome go to the
  container's termination message, where the operator reads them.

A revision that is already complete is verified again and left alone, so re-running the Job is
cheap. Older complete revisions beyond ``--keep`` are removed at the end, except those named by
``--in-use`` (what deployments still serve).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

MANIFEST = ".k2think-complete.json"
PARTIAL_SUFFIX = ".partial"
#: hf download keeps resume metadata under ``<local-dir>/.cache``; not part of the model.
HF_METADATA_DIR = ".cache"
COMMIT = re.compile(r"^[0-9a-f]{40}$")
SOURCE = re.compile(r"^(hf|s3|gs|file)://(.+)$")

#: Exit codes, and the ``reason`` the termination message carries.
EXIT_DOWNLOAD_FAILED = 2
EXIT_VERIFY_FAILED = 3
DOWNLOAD_FAILED = "DownloadFailed"
VERIFY_FAILED = "VerifyFailed"


class FillError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Source:
    scheme: str
    path: str  # ORG/NAME, BUCKET/PATH or /ABS/PATH

    @property
    def model_dir(self) -> str:
        return "--".join(p for p in self.path.split("/") if p)


def parse_source(uri: str) -> Source:
    match = SOURCE.match(uri)
    if match is None:
        raise FillError(DOWNLOAD_FAILED, f"{uri!r} is not an hf://, s3://, gs:// or file:// source")
    return Source(match.group(1), match.group(2))


def download_command(
    source: Source, commit: str, dest: Path, include: Sequence[str], max_workers: int
) -> list[str]:
    """The hub's own client, as one argv (pure, so the tests check it)."""
    if source.scheme == "hf":
        argv = ["hf", "download", source.path, "--revision", commit, "--local-dir", str(dest)]
        for pattern in include:
            argv += ["--include", pattern]
        return [*argv, "--max-workers", str(max_workers)]
    if source.scheme == "s3":
        argv = ["aws", "s3", "sync", f"s3://{source.path.rstrip('/')}/", str(dest)]
        if include:
            argv += ["--exclude", "*"]
            for pattern in include:
                argv += ["--include", pattern]
        return argv
    if source.scheme == "gs":
        return [
            "gcloud",
            "storage",
            "cp",
            "--recursive",
            f"gs://{source.path.rstrip('/')}/*",
            str(dest),
        ]
    return ["cp", "-a", f"{source.path.rstrip('/')}/.", str(dest)]


def included(name: str, include: Sequence[str]) -> bool:
    return not include or any(fnmatch.fnmatch(name, p) for p in include)


def local_index(root: Path, include: Sequence[str] = ()) -> dict[str, int]:
    """Relative path -> size of every regular file under ``root`` (the cache's own metadata
    excluded)."""
    index: dict[str, int] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST or rel.split("/", 1)[0] == HF_METADATA_DIR:
            continue
        if path.is_file() and included(rel, include):
            index[rel] = path.stat().st_size
    return index


def verify(directory: Path, index: Mapping[str, int]) -> list[str]:
    """Every file of the index present with its size; the problems, in order (empty: verified)."""
    if not index:
        return ["the source index lists no files"]
    problems: list[str] = []
    for rel, size in sorted(index.items()):
        path = directory / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != size:
            problems.append(f"{rel}: {path.stat().st_size} bytes, the index says {size}")
    return problems


def hf_resolve(repo: str, revision: str) -> str:
    """A branch or tag -> its commit, asked once of the hub (a commit is returned as is)."""
    if COMMIT.match(revision):
        return revision
    from huggingface_hub import HfApi

    sha = HfApi().model_info(repo, revision=revision).sha
    if not isinstance(sha, str) or not sha:
        raise FillError(DOWNLOAD_FAILED, f"the hub did not resolve {repo}@{revision}")
    return sha


def hf_index(repo: str, commit: str, include: Sequence[str]) -> dict[str, int]:
    """The repository's file list with sizes at ``commit`` (LFS files carry their real size)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    return {
        item.path: item.size
        for item in HfApi().list_repo_tree(repo, revision=commit, recursive=True)
        if isinstance(item, RepoFile) and included(item.path, include)
    }


def bucket_index(source: Source, include: Sequence[str], run: Runner) -> dict[str, int]:
    """Object key (relative to the prefix) -> size, from the cloud CLI's listing."""
    prefix = source.path.rstrip("/") + "/"
    index: dict[str, int] = {}
    if source.scheme == "s3":
        _bucket, _, key_prefix = prefix.partition("/")
        out = run(["aws", "s3", "ls", "--recursive", f"s3://{prefix}"])
        for line in out.splitlines():
            parts = line.split(None, 3)  # DATE TIME SIZE KEY
            if len(parts) == 4 and parts[3].startswith(key_prefix):
                rel = parts[3][len(key_prefix) :]
                if rel and included(rel, include):
                    index[rel] = int(parts[2])
        return index
    out = run(["gcloud", "storage", "ls", "--long", "--recursive", f"gs://{prefix}**"])
    for line in out.splitlines():
        parts = line.split()  # SIZE DATE URL
        if len(parts) == 3 and parts[0].isdigit() and parts[2].startswith(f"gs://{prefix}"):
            rel = parts[2][len(f"gs://{prefix}") :]
            if rel and included(rel, include):
                index[rel] = int(parts[0])
    return index


Runner = Callable[[list[str]], str]


def run_command(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, check=True, capture_output=True, text=True)
    except FileNotFoundError as error:
        raise FillError(DOWNLOAD_FAILED, f"{argv[0]} is not installed in the image") from error
    except subprocess.CalledProcessError as error:
        tail = (error.stderr or error.stdout or "").strip().splitlines()[-3:]
        raise FillError(
            DOWNLOAD_FAILED, f"{' '.join(argv[:3])} exited {error.returncode}: {' | '.join(tail)}"
        ) from error
    return done.stdout


def complete_revisions(model_root: Path) -> list[Path]:
    """Complete revision directories, newest first (by their manifest's time)."""
    found = (
        [
            p
            for p in model_root.iterdir()
            if p.is_dir() and not p.name.endswith(PARTIAL_SUFFIX) and (p / MANIFEST).is_file()
        ]
        if model_root.is_dir()
        else []
    )
    return sorted(found, key=lambda p: ((p / MANIFEST).stat().st_mtime, p.name), reverse=True)


def prune(model_root: Path, keep: int, in_use: Sequence[str]) -> list[str]:
    """Remove complete revisions beyond the ``keep`` newest that nobody serves; names removed."""
    removed: list[str] = []
    for path in complete_revisions(model_root)[keep:]:
        if path.name not in in_use:
            shutil.rmtree(path)
            removed.append(path.name)
    return removed


@dataclass(frozen=True)
class Request:
    source: str
    revision: str
    root: Path
    include: tuple[str, ...] = ()
    max_workers: int = 8
    keep: int = 2
    in_use: tuple[str, ...] = ()


def fill(request: Request, run: Runner = run_command) -> dict[str, object]:
    """Fill (or re-verify) one revision; returns what goes in the termination message."""
    source = parse_source(request.source)
    commit = (
        hf_resolve(source.path, request.revision) if source.scheme == "hf" else request.revision
    )
    model_root = request.root / source.model_dir
    target = model_root / commit
    if source.scheme == "hf":
        index = hf_index(source.path, commit, request.include)
    elif source.scheme == "file":
        if not Path(source.path).is_dir():
            raise FillError(DOWNLOAD_FAILED, f"{source.path} is not a directory")
        index = local_index(Path(source.path), request.include)
    else:
        index = bucket_index(source, request.include, run)

    if not (target / MANIFEST).is_file() or verify(target, index):
        partial = model_root / f"{commit}{PARTIAL_SUFFIX}"
        partial.mkdir(parents=True, exist_ok=True)  # kept across retries: hf download resumes
        run(download_command(source, commit, partial, request.include, request.max_workers))
        problems = verify(partial, index)
        if problems:
            shown = "; ".join(problems[:5]) + (
                f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
            )
            raise FillError(
                VERIFY_FAILED, f"{len(problems)} file(s) differ from the index: {shown}"
            )
        shutil.rmtree(partial / HF_METADATA_DIR, ignore_errors=True)
        manifest = {
            "source": request.source,
            "revision": request.revision,
            "commit": commit,
            "completedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": dict(sorted(index.items())),
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        if target.exists():  # an incomplete leftover from an older run
            shutil.rmtree(target)
        os.rename(partial, target)
    removed = prune(model_root, request.keep, (*request.in_use, commit))
    return {
        "reason": "Ready",
        "commit": commit,
        "path": f"{source.model_dir}/{commit}",
        "files": len(index),
        "bytes": sum(index.values()),
        "removed": removed,
    }


def parse_args(argv: Sequence[str]) -> tuple[Request, Path | None]:
    parser = argparse.ArgumentParser(prog="python -m k2think_operator.cachefill")
    parser.add_argument("--source", required=True)
    parser.add_argument("--revision", required=True)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--include", action="append", default=[])
    parser.add_argument("--max-workers", type=int, default=8)
    parser.add_argument("--keep", type=int, default=2)
    parser.add_argument("--in-use", action="append", default=[])
    parser.add_argument("--termination-log", type=Path, default=None)
    args = parser.parse_args(argv)
    request = Request(
        source=args.source,
        revision=args.revision,
        root=args.root,
        include=tuple(args.include),
        max_workers=args.max_workers,
        keep=args.keep,
        in_use=tuple(args.in_use),
    )
    return request, args.termination_log


def main(argv: Sequence[str] | None = None) -> int:
    request, termination_log = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        result = fill(request)
        code = 0
    except FillError as error:
        result = {"reason": error.reason, "message": str(error)[:3000]}
        code = EXIT_VERIFY_FAILED if error.reason == VERIFY_FAILED else EXIT_DOWNLOAD_FAILED
    text = json.dumps(result, sort_keys=True)
    print(text)
    if termination_log is not None:
        termination_log.write_text(text[:4000])  # the kubelet keeps at most 4096 bytes
    return code


if __name__ == "__main__":
    sys.exit(main())
