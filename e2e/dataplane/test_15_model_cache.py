"""Serving from a model cache: the suite's application loads the tiny model from the directory
the real fill code (``k2think_operator.cachefill``, what the cache's Job runs) produced from a
``file://`` source, with the hub switched off. Shares the session's Ray head and application."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from dataplane_support import ServedApp

pytestmark = [pytest.mark.dataplane, pytest.mark.timeout(600)]


def test_the_fill_verified_every_file_and_published_the_revision(
    cache_fill: dict[str, Any], cached_model_dir: Path, tiny_model_dir: Path
) -> None:
    assert cache_fill["reason"] == "Ready" and cache_fill["commit"] == "r1"
    assert cached_model_dir.name == "r1"
    assert not cached_model_dir.with_name("r1.partial").exists()
    manifest = json.loads((cached_model_dir / ".k2think-complete.json").read_text())
    source = {
        p.relative_to(tiny_model_dir).as_posix(): p.stat().st_size
        for p in tiny_model_dir.rglob("*")
        if p.is_file()
    }
    assert manifest["files"] == source and cache_fill["files"] == len(source)


def test_serve_loads_the_cached_path_with_the_hub_offline(
    served_app: ServedApp, cached_model_dir: Path
) -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    config = yaml.safe_load(served_app.serve_config_v2)
    llm = config["applications"][0]["args"]["llm_configs"][0]
    assert llm["model_loading_config"]["model_source"] == str(cached_model_dir.resolve())
    client = openai.OpenAI(
        base_url=served_app.openai_base_url, api_key=served_app.api_key, timeout=120, max_retries=0
    )
    reply = client.chat.completions.create(
        model=served_app.served_name,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=8,
    )
    assert reply.choices[0].finish_reason in ("length", "stop")
