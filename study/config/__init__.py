"""Configuration: typed dataclasses (schema.py, synthetic.py) and their TOML reading and writing
(toml_io.py). Imports no data, model or training code."""
from study.config.schema import (AdlConfig, Config, DataConfig, FeatureConfig, FsddConfig, ManifestConfig,  # noqa: I001
                                 ModelConfig, PruneConfig, TextConfig, TrackingConfig, TrainConfig)
from study.config.knobs import knob, section
from study.config.synthetic import SyntheticConfig
from study.config.toml_io import (ConfigError, build, dumps_toml, flatten, identity, load_config, read_toml,
                                  read_toml_with_sources, set_dotted, to_dict)
from study.names import BASELINES, METHODS

__all__ = ["AdlConfig", "BASELINES", "Config", "ConfigError", "DataConfig", "FeatureConfig", "FsddConfig", "ManifestConfig", "METHODS",
           "ModelConfig", "PruneConfig", "SyntheticConfig", "TextConfig", "TrackingConfig", "TrainConfig", "build",
           "dumps_toml", "flatten", "identity", "knob", "load_config", "section", "read_toml",
           "read_toml_with_sources", "set_dotted", "to_dict"]
