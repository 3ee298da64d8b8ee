"""`edgeformer cache`: the cache's location and size, and cleaning one kind without the other."""

from __future__ import annotations

import json
import os

from edgeformer.cli import main
from edgeformer.compiler import compile


def test_cache_shows_a_compile_and_cleans_it_but_keeps_tuning(user_models, capsys):
    root = os.environ["EDGEFORMER_CACHE_DIR"]
    compile("mymodels:tiny", "host-ort", user_models / "a", input_shapes=[(1, 3, 8, 8)])
    db = user_models.joinpath(root, "tvm-tune", "host-tvm", "abc", "database.json")
    db.parent.mkdir(parents=True)
    db.write_text("{}")
    assert main(["cache", "--json"]) == 0
    kinds = {k["kind"]: k for k in json.loads(capsys.readouterr().out)["kinds"]}
    assert kinds["compile"]["entries"] == 1 and kinds["compile"]["bytes"] > 0
    assert kinds["tuning"]["entries"] == 1
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert root in out and "EDGEFORMER_CACHE_DIR" in out and "--clean" in out
    assert main(["cache", "--clean", "compile"]) == 0
    assert "removed compile: 1 entries" in capsys.readouterr().out
    assert main(["cache", "--json"]) == 0
    kinds = {k["kind"]: k for k in json.loads(capsys.readouterr().out)["kinds"]}
    assert kinds["compile"]["entries"] == 0 and kinds["tuning"]["entries"] == 1 and db.is_file()
    # the artifact folder itself is untouched
    assert (user_models / "a" / "manifest.json").is_file()
