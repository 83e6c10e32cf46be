"""The port a request arrived on decides which URLs exist."""
from django.conf import settings


def role_for(scope) -> str:
    server = scope.get("server")
    if server and server[1] == settings.SMARTFLOW_PROXY_PORT:
        return "proxy"
    return "management"


class PortUrlconfMiddleware:
    """Serves smartflow.urls_proxy on the proxy port and urls_management elsewhere."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        scope = getattr(request, "scope", None)
        if scope is not None and role_for(scope) == "proxy":
            request.urlconf = "smartflow.urls_proxy"
        return self.get_response(request)
