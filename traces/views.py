"""The VAS log management API."""
from rest_framework.decorators import api_view
from rest_framework.response import Response

from .models import VASLog, as_dict
from .recorder import recorder


@api_view(["GET"])
def log_detail(request, log_id: str):
    log = VASLog.objects.filter(pk=log_id).first()
    if log is None:
        pending = recorder.find(log_id)
        if pending is None:
            return Response({"success": False, "error": f"No VAS log with id '{log_id}'."}, status=404)
        log = VASLog(**pending)
    return Response({"success": True, "data": as_dict(log)})
