import copy
import json

import pytest

from service.fhir import resources as R
from tests.fhir_resources import factories as F


@pytest.fixture
def entries():
    return R.build_prescription_resources(F.prescription(), F.snapshot(), F.signing())


@pytest.fixture
def by_role(entries):
    """role (from the identifier / tag value) -> a deep copy of the resource, free to break."""
    key = F.signing().key
    return {e["ifNoneExist"].split("|", 1)[1][len(key) + 1:]: copy.deepcopy(e["resource"]) for e in entries}


@pytest.fixture
def full(entries):
    """"<resourceType>:<role>" -> fullUrl."""
    key = F.signing().key
    return {f"{e['resource']['resourceType']}:{e['ifNoneExist'].split('|', 1)[1][len(key) + 1:]}": e["fullUrl"]
            for e in entries}


def load(path):
    return json.loads(path.read_text(encoding="utf-8"))
