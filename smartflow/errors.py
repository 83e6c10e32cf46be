"""404s in the right format for each port."""
from django.http import JsonResponse


def not_found_openai(request, exception=None):
    return JsonResponse({"error": {"message": f"Unknown route {request.method} {request.path}. "
                                   "The proxy serves /v1/chat/completions, /v1/messages, /v1/models and /health.",
                                   "type": "invalid_request_error", "param": None, "code": "unknown_route"}},
                        status=404)
