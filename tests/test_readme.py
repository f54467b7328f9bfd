"""The README's examples are true as written: every ```python block runs in a fresh namespace,
the ```yaml model section is a valid config meaning what the README says, and the dotted
overrides it lists are accepted."""
import re
from pathlib import Path

import pytest
import torch
import yaml

import anodev2
from anodev2.training.config import config_from_dict, load_config, load_raw, merge_raw

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", README, flags=re.S | re.M)


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_snippet_runs_as_written(index):
    code = blocks("python")[index]
    torch.manual_seed(0)
    namespace: dict = {"__name__": f"readme_snippet_{index}"}
    exec(compile(code, f"README.md python block {index}", "exec"), namespace)
    if "block" in namespace:  # the library snippet: the block did what the comments say
        block = namespace["block"]
        assert isinstance(block, anodev2.ODEBlock)
        assert block.grad_mode == anodev2.Checkpoint(checkpoints=2)
        assert namespace["T"].grad is not None and namespace["y0"].grad is not None


def test_there_are_snippets():
    assert len(blocks("python")) >= 2 and len(blocks("yaml")) >= 1


def test_yaml_model_section_is_a_valid_config():
    (text,) = blocks("yaml")
    cfg = config_from_dict(merge_raw(load_raw("aconnect"), yaml.safe_load(text)))
    assert cfg.model.grad == anodev2.Checkpoint(checkpoints=2, keep_forward=False)
    assert cfg.model.evolution == {"kind": "rda", "a_max": 0.25, "targets": None}


def test_dotted_overrides_quoted_in_the_readme_are_accepted():
    quoted = re.findall(r"`(model\.(?:grad|evolution)\.[a-z_]+=[^`]+)`", README)
    assert len(quoted) >= 4
    for override in quoted:
        load_config("aconnect", [override])
