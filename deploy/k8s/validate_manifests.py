#!/usr/bin/python3
"""Validates Kubernetes manifests against the API's own types.

The types come from Debian's python3-kubernetes (the official client, whose
models are generated from the Kubernetes OpenAPI spec): every field must
exist in its object's schema (a typo is an error, not silently dropped), have
the schema's type, and every required field must be present. Resource
quantities, names and labels are checked with the API server's rules.

  validate_manifests.py FILE.yaml...     exit 0 if all are valid, else 1

Each problem is printed as FILE: KIND/NAME: path.to.field: what is wrong.
"""
import inspect
import re
import sys

import kubernetes.client as k8s
import yaml

# apiVersion/kind -> model class (only what emud's manifests use; anything
# else is an error, so a new kind is added here on purpose).
KINDS = {
    ("v1", "Namespace"): k8s.V1Namespace,
    ("v1", "ServiceAccount"): k8s.V1ServiceAccount,
    ("v1", "ConfigMap"): k8s.V1ConfigMap,
    ("v1", "Pod"): k8s.V1Pod,
    ("apps/v1", "DaemonSet"): k8s.V1DaemonSet,
    ("scheduling.k8s.io/v1", "PriorityClass"): k8s.V1PriorityClass,
}

QUANTITY = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[munkMGTPE]|[KMGTPE]i)?$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def required_fields(cls):
    """Attributes whose setter refuses None (the OpenAPI 'required' list)."""
    out = set()
    for attr in cls.openapi_types:
        prop = getattr(cls, attr, None)
        if isinstance(prop, property) and prop.fset is not None:
            if "must not be `None`" in inspect.getsource(prop.fset):
                out.add(attr)
    return out


class Validator:
    def __init__(self):
        self.errors = []

    def error(self, path, msg):
        self.errors.append(f"{path}: {msg}")

    def check(self, value, typ, path):
        if value is None:
            return  # YAML null: the field is absent
        if typ.startswith("list["):
            if not isinstance(value, list):
                return self.error(path, f"must be a list, not {type(value).__name__}")
            for i, v in enumerate(value):
                self.check(v, typ[5:-1], f"{path}[{i}]")
            return
        if typ.startswith("dict("):
            if not isinstance(value, dict):
                return self.error(path, f"must be a map, not {type(value).__name__}")
            inner = typ[typ.index(",") + 1:-1].strip()
            for k, v in value.items():
                if not isinstance(k, str):
                    self.error(path, f"key {k!r} must be a string")
                self.check(v, inner, f"{path}.{k}")
            return
        if typ == "str":
            if not isinstance(value, str):
                return self.error(path, f"must be a string, not {type(value).__name__} {value!r} (quote it)")
            return
        if typ == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                return self.error(path, f"must be an integer, not {value!r}")
            return
        if typ == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return self.error(path, f"must be a number, not {value!r}")
            return
        if typ == "bool":
            if not isinstance(value, bool):
                return self.error(path, f"must be true or false, not {value!r}")
            return
        if typ in ("object", "datetime", "date"):
            return
        cls = getattr(k8s, typ, None)
        if cls is None:
            return self.error(path, f"unknown schema type {typ}")
        if not isinstance(value, dict):
            return self.error(path, f"must be an object ({typ}), not {type(value).__name__}")
        by_json = {j: a for a, j in cls.attribute_map.items()}
        for key, v in value.items():
            if key not in by_json:
                known = ", ".join(sorted(by_json))
                self.error(f"{path}.{key}", f"unknown field in {typ} (known: {known})")
                continue
            self.check(v, cls.openapi_types[by_json[key]], f"{path}.{key}")
        for attr in required_fields(cls):
            if value.get(cls.attribute_map[attr]) is None:
                self.error(path, f"required field '{cls.attribute_map[attr]}' of {typ} is missing")

    def semantic(self, doc, path):
        """The API server's own rules for names, labels and quantities."""
        meta = doc.get("metadata") or {}
        name = meta.get("name", "")
        if isinstance(name, str) and not DNS1123_SUBDOMAIN.match(name):
            self.error(f"{path}.metadata.name", f"{name!r} is not a DNS-1123 name")
        for field in ("labels", "annotations"):
            for k, v in (meta.get(field) or {}).items():
                prefix, _, label = k.rpartition("/")
                if (prefix and not DNS1123_SUBDOMAIN.match(prefix)) or not LABEL_NAME.match(label) or len(label) > 63:
                    self.error(f"{path}.metadata.{field}", f"key {k!r} is not a qualified name")
                if field == "labels" and isinstance(v, str) and (len(v) > 63 or not LABEL_VALUE.match(v)):
                    self.error(f"{path}.metadata.labels.{k}", f"{v!r} is not a valid label value")

        def walk(node, p):
            if isinstance(node, dict):
                for k, v in node.items():
                    if k in ("requests", "limits") and isinstance(v, dict):
                        for res, q in v.items():
                            if not isinstance(q, (str, int)) or not QUANTITY.match(str(q)):
                                self.error(f"{p}.{k}.{res}", f"{q!r} is not a resource quantity")
                    if k == "env" and isinstance(v, list):
                        for i, e in enumerate(v):
                            if isinstance(e, dict) and not ENV_NAME.match(str(e.get("name", ""))):
                                self.error(f"{p}.env[{i}].name", f"{e.get('name')!r} is not a valid env name")
                    if k in ("containers", "initContainers") and isinstance(v, list):
                        for i, c in enumerate(v):
                            if isinstance(c, dict) and not DNS1123_LABEL.match(str(c.get("name", ""))):
                                self.error(f"{p}.{k}[{i}].name", "container names are DNS-1123 labels")
                    walk(v, f"{p}.{k}")
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    walk(v, f"{p}[{i}]")

        walk(doc, path)


def validate_file(filename):
    v = Validator()
    with open(filename) as f:
        try:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        except yaml.YAMLError as e:
            return [f"{filename}: not YAML: {e}"]
    for doc in docs:
        if not isinstance(doc, dict):
            v.errors.append("document is not a map")
            continue
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key[0] == "kustomize.config.k8s.io/v1beta1":
            continue  # checked by manifests_test (every resource listed exists)
        cls = KINDS.get(key)
        name = (doc.get("metadata") or {}).get("name", "?")
        where = f"{key[1]}/{name}"
        if cls is None:
            v.errors.append(f"{where}: apiVersion {key[0]!r} kind {key[1]!r} is not known to this validator")
            continue
        v.check(doc, cls.__name__, where)
        v.semantic(doc, where)
    return [f"{filename}: {e}" for e in v.errors]


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    errors = []
    for fn in argv[1:]:
        errors += validate_file(fn)
    for e in errors:
        print(e)
    if not errors:
        print(f"{len(argv) - 1} manifest files valid")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
