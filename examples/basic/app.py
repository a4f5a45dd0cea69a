"""A small WSGI app whose views offload work to a farm, to a mule, and message a programmed mule."""

import json
from urllib.parse import parse_qs

import tasks

from uwsgiconf_mules.runtime import Farm, Mule


def application(environ, start_response):
    path = environ["PATH_INFO"]
    query = {key: values[0] for key, values in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if path == "/thumbnail":
        body = {"queued": tasks.make_thumbnail(int(query.get("id", "1")))}
    elif path == "/report":
        body = {"queued": tasks.build_report(query.get("name", "daily"))}
    elif path == "/notify":
        body = {"sent": Mule(4).send(query.get("text", "hello"))}
    elif path == "/farms":
        body = {farm.name: [mule.id for mule in farm.mules] for farm in Farm.get_farms()}
    else:
        body = {"routes": ["/thumbnail?id=N", "/report?name=X", "/notify?text=X", "/farms"]}
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]
