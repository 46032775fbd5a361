"""The A/B settings of ``python -m bench.producer_setting_cost``."""

import argparse

import pytest

from bench.producer_setting_cost import assignment, parse_args


def test_settings_parse_into_the_producers_environment():
    assert assignment("RESULTS_READ_ALL=true") == {"RESULTS_READ_ALL": "true"}
    assert assignment("KAFKA_LINGER_MS=5,IMAGE_SCHEMA=1") == {"KAFKA_LINGER_MS": "5", "IMAGE_SCHEMA": "1"}
    assert assignment("URL=http://x/?a=b") == {"URL": "http://x/?a=b"}  # only the first '=' splits
    args = parse_args(["--a", "X=1", "--b", "X=2", "--stack-env", "RESULTS_PARTITIONS=8"])
    assert (args.a, args.b, args.stack_env, args.producers) == ({"X": "1"}, {"X": "2"}, {"RESULTS_PARTITIONS": "8"}, 4)


@pytest.mark.parametrize("text", ["", "X", "=1", "X=1,Y"])
def test_a_setting_without_a_name_or_value_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=value"):
        assignment(text)
