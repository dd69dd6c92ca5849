"""HTTP route of the scheduler instances: who runs tasks, where, and how busy."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from app import parts
from app.http.inputs import only_parameters
from app.schemas import InstanceOut
from app.services import instances

bp = Blueprint("instances", __name__, url_prefix="/api")

instance_out = InstanceOut()


@bp.get("/instances")
def list_instances() -> Response:
    """List the registered scheduler instances, oldest first."""
    only_parameters()
    lease_s = current_app.config["LEASE_S"]
    return jsonify(instance_out.dump(instances.listing(parts.engine(), lease_s), many=True))
