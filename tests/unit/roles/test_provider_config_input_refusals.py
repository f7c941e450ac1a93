"""The message of provider_config's one assert of its variables (tasks/validate.yml).

``__provider_config_input_refusals`` (roles/provider_config/vars/main.yml) lists the messages of
the checks that fail, in order: the package variables, the image pin, the compose variables, the
secrets, then each customized model without a name or a usage ZIP. Each message is the one of the
assert it replaced, word for word, and names its variables; the assert's message joins them with
spaces. Every row compares the joined message with the expected one exactly.
"""

from __future__ import annotations

import os

import pytest
from ansible_collections.zerog.compute.tests.unit.roles._expression import PLAYBOOK_BIN, table_test

pytestmark = pytest.mark.skipif(not os.path.exists(PLAYBOOK_BIN), reason="no .venv")

PACKAGE = ("provider_config_package_sha256 must be the SHA-256 (64 hex digits) of the broker package you checked, "
           "and provider_config_package_src (a file on the controller) or provider_config_package_url (http or https) "
           "must say where it comes from; provider_config_install_dir must be absolute.")
IMAGE = ("Pin the broker image: provider_config_broker_image_digest must be sha256:<64 hex digits> (docker buildx "
         "imagetools inspect ghcr.io/0glabs/0g-serving-broker:{tag} shows it), or set "
         "provider_config_require_image_digest to false to run by tag only. provider_config_mysql_image_digest, when "
         "set, must have the same form. Customized models need broker image 0.2.1 or later.")
COMPOSE = ("provider_config_published_port must be a port from 1 to 65535; provider_config_compose_project a compose "
           "project name (lower-case letters, digits, - and _); provider_config_network_name a Docker network name "
           "other than the package's shared name \"localhost\".")
SECRETS = ("provider_config_private_keys (from ansible-vault, see the role README) and provider_config_serving_url are "
           "required; provider_config_database_password, when given, must be 12 to 128 characters from "
           "A-Z a-z 0-9 . _ ~ + = -.")
MODEL = ("provider_config_customized_models[{index}] needs name and usage_file_src (the path on the controller of the "
         "model's usage ZIP, copied into models/).")

MODEL_OK = {"name": "mobilenet_v2", "hash": "0x" + "6b" * 32, "image": "ghcr.io/example/trainer:1.0",
            "training_script": "/app/train.py", "tokenizer": "0x" + "1f" * 32, "usage_file_src": "files/m.zip"}
# Valid values of every variable the checks read (the others keep their defaults).
GOOD = {
    "provider_config_package_sha256": "A" * 64,
    "provider_config_package_src": "",
    "provider_config_package_url": "https://example.org/fine-tuning-broker.tar.gz",
    "provider_config_install_dir": "/opt/zerog/broker",
    "provider_config_broker_image_tag": "0.2.1",
    "provider_config_broker_image_digest": "sha256:" + "b" * 64,
    "provider_config_require_image_digest": True,
    "provider_config_mysql_image_digest": "",
    "provider_config_published_port": 8080,
    "provider_config_compose_project": "zerog-finetune-broker",
    "provider_config_network_name": "zerog-finetune-broker",
    "provider_config_private_keys": ["0x" + "59" * 32],
    "provider_config_serving_url": "http://203.0.113.7:8080",
    "provider_config_database_password": "",
    "provider_config_customized_models": [],
}


def _v(**change):
    return dict(GOOD, **change)


def _model(**change):
    return {k: v for k, v in dict(MODEL_OK, **change).items() if v is not None}


# (case, the variables, the expected message ("" when nothing is refused), expected comparison)
CASES = [
    ("all valid", GOOD, ""),
    ("valid, with a customized model", _v(provider_config_customized_models=[MODEL_OK]), ""),
    ("sha256 with a prefix", _v(provider_config_package_sha256="sha256:abc"), PACKAGE),
    ("install directory relative", _v(provider_config_install_dir="opt/broker"), PACKAGE),
    ("no package source", _v(provider_config_package_url="ftp://example.org/p.tar.gz"), PACKAGE),
    ("an offline package instead of the URL",
     _v(provider_config_package_url="ftp://example.org/p.tar.gz", provider_config_package_src="files/p.tar.gz"), ""),
    ("no image digest", _v(provider_config_broker_image_digest=""), IMAGE.format(tag="0.2.1")),
    ("by tag only", _v(provider_config_broker_image_digest="", provider_config_require_image_digest=False), ""),
    ("image digest malformed", _v(provider_config_broker_image_digest="sha256:1234"), IMAGE.format(tag="0.2.1")),
    ("empty image tag", _v(provider_config_broker_image_tag=""), IMAGE.format(tag="")),
    ("MySQL digest malformed", _v(provider_config_mysql_image_digest="1234"), IMAGE.format(tag="0.2.1")),
    ("MySQL digest well-formed", _v(provider_config_mysql_image_digest="sha256:" + "c" * 64), ""),
    ("customized models on image 0.2.0",
     _v(provider_config_broker_image_tag="0.2.0", provider_config_customized_models=[MODEL_OK]), IMAGE.format(tag="0.2.0")),
    ("image 0.2.0 without customized models", _v(provider_config_broker_image_tag="0.2.0"), ""),
    ("port 0", _v(provider_config_published_port=0), COMPOSE),
    ("port 70000", _v(provider_config_published_port=70000), COMPOSE),
    ("port not a number", _v(provider_config_published_port="eighty"), COMPOSE),
    ("project with capitals", _v(provider_config_compose_project="Broker"), COMPOSE),
    ("network localhost", _v(provider_config_network_name="localhost"), COMPOSE),
    ("no private key", _v(provider_config_private_keys=[]), SECRETS),
    ("no serving URL", _v(provider_config_serving_url=""), SECRETS),
    ("database password too short", _v(provider_config_database_password="short"), SECRETS),
    ("database password with a space", _v(provider_config_database_password="twelve chars long"), SECRETS),
    ("database password given", _v(provider_config_database_password="Abcdef012345._~+=-"), ""),
    ("a model without usage_file_src",
     _v(provider_config_customized_models=[MODEL_OK, _model(name="resnet", usage_file_src=None)]), MODEL.format(index=1)),
    ("a model with an empty usage_file_src",
     _v(provider_config_customized_models=[_model(usage_file_src="")]), MODEL.format(index=0)),
    ("a model without a name", _v(provider_config_customized_models=[_model(name=None)]), MODEL.format(index=0)),
    ("two models without their usage ZIP",
     _v(provider_config_customized_models=[_model(usage_file_src=None), _model(name="b", usage_file_src=None)]),
     MODEL.format(index=0) + " " + MODEL.format(index=1)),
    ("every check fails at once",
     _v(provider_config_package_sha256="x", provider_config_broker_image_digest="", provider_config_published_port=0,
        provider_config_private_keys=[], provider_config_customized_models=[_model(name=None)]),
     " ".join([PACKAGE, IMAGE.format(tag="0.2.1"), COMPOSE, SECRETS, MODEL.format(index=0)])),
]

TASK_VARS = {name: "{{ item.v['" + name + "'] }}" for name in GOOD}

results, test_input_refusals = table_test(
    "provider_config", "__provider_config_input_refusals | join(' ') == item.want", TASK_VARS,
    [(name, v, want, True) for name, v, want in CASES], ("v", "want"))
