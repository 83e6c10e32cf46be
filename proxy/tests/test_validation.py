"""Request body checks (pure)."""
import pytest

from proxy.providers.base import ClientError
from proxy.validation import parse_chat

OK = b'{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}]}'


def test_it_accepts_a_plain_request():
    assert parse_chat(OK)["model"] == "gpt-4.1"


@pytest.mark.parametrize("raw,param,fragment", [
    (b"", None, "empty"),
    (b"{not json", None, "not valid JSON"),
    (b"[1,2]", None, "JSON object"),
    (b'{"messages":[{"role":"user","content":"x"}]}', "model", "'model' is required"),
    (b'{"model":"gpt-4.1"}', "messages", "'messages' is required"),
    (b'{"model":"gpt-4.1","messages":[]}', "messages", "non-empty"),
    (b'{"model":"gpt-4.1","messages":["hi"]}', "messages[0]", "must be an object"),
    (b'{"model":"gpt-4.1","messages":[{"role":"robot","content":"x"}]}', "messages[0].role", "role must be"),
    (b'{"model":"gpt-4.1","messages":[{"role":"user","content":5}]}', "messages[0].content", "string or a list"),
    (b'{"model":"gpt-4.1","messages":[{"role":"user"}]}', "messages[0].content", "required"),
    (b'{"model":"gpt-4.1","messages":[{"role":"tool","content":"x"}]}', "messages[0].tool_call_id", "tool_call_id"),
    (b'{"model":"gpt-4.1","messages":[{"role":"user","content":"x"}],"temperature":"hot"}', "temperature", "number"),
    (b'{"model":"gpt-4.1","messages":[{"role":"user","content":"x"}],"max_tokens":true}', "max_tokens", "integer"),
    (b'{"model":"gpt-4.1","messages":[{"role":"user","content":"x"}],"max_tokens":0}', "max_tokens", "at least 1"),
    (b'{"model":"gpt-4.1","messages":[{"role":"user","content":"x"}],"stream":"yes"}', "stream", "boolean"),
])
def test_it_refuses_bad_bodies_clearly(raw, param, fragment):
    with pytest.raises(ClientError) as err:
        parse_chat(raw)
    assert err.value.status == 400
    assert err.value.param == param
    assert fragment in err.value.message


def test_an_assistant_message_with_tool_calls_may_have_null_content():
    body = (b'{"model":"gpt-4.1","messages":[{"role":"user","content":"x"},{"role":"assistant","content":null,'
            b'"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},'
            b'{"role":"tool","tool_call_id":"c","content":"ok"}]}')
    assert len(parse_chat(body)["messages"]) == 3
