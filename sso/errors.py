"""Why a sign-in or an SSO request was refused: a code, a status and a message a person can act on."""


class SsoError(Exception):
    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status

    def as_dict(self) -> dict:
        return {"success": False, "error": self.message, "code": self.code}
