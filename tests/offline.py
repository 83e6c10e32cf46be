"""A prelude for `python -c` children that must prove they need no network: every connect fails."""

NETWORK_OFF = r"""
import socket
def refuse(*args, **kwargs):
    raise OSError("network is off in this test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
"""
