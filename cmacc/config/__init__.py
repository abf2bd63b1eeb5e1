"""Run configuration: the schema (dataclasses, presets, choice lists), its validation, and loading.

    schema.py      the dataclass tree with the papers' symbols, presets, typed keys (torch-free)
    validation.py  every impossible or absurd value refused by name; each family adds its checks
    loading.py     YAML files, --set overrides, saved configs, what a resume may change
"""
from .schema import (CHOICES, FIELDS, IMAGE_PRESETS, LEAVES, PRESETS, AudioConfig, AvidConfig, CmaConfig, Config,
                     ConfigError, DataConfig, EvalConfig, ModelConfig, ProbeConfig, RunConfig, SamplerConfig, flatten,
                     parse_set)
from .validation import validate
from .loading import (RECOVERY, RESUMABLE, changed_keys, config_from_dict, dump_yaml, load_config, read_yaml,
                      resume_config)

__all__ = ["CHOICES", "FIELDS", "IMAGE_PRESETS", "LEAVES", "PRESETS", "AudioConfig", "AvidConfig", "CmaConfig",
           "Config", "ConfigError", "DataConfig", "EvalConfig", "ModelConfig", "ProbeConfig", "RunConfig",
           "SamplerConfig", "flatten", "parse_set", "validate", "RECOVERY", "RESUMABLE", "changed_keys",
           "config_from_dict", "dump_yaml", "load_config", "read_yaml", "resume_config"]
