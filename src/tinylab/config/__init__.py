"""Params files: one generic loader and one schema module per kind of file under params/.

- `loader`: YAML, `extends:`, references between files, `--set` overrides, validation and
  `ConfigError`; it knows no schema (`load_config(path, Schema, overrides=...)`).
- `model`, `data`, `stage`, `eval`, `pipeline`, `cluster`, `paper`: the schemas of
  params/models/, params/data/, params/stages/, params/eval/, params/pipelines/, params/clusters/
  and params/paper/ (the paper's facts).
- `kinds`: which schema a file under params/<kind>/ follows (`tinylab params check`, pipelines).

    tinylab params check params/stages/demo/base.yaml
    tinylab params show params/stages/demo/base.yaml --set optim.lr=1e-3
"""
