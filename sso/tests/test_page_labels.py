"""Every form control on the dashboard pages has an accessible name, and a click on its label focuses it.

Checked in headless Chromium after the pages' scripts ran, so controls the JavaScript creates (provider
cards, the trace detail tabs) count too.
"""
import re

from playwright.sync_api import expect

from traces.models import VASLog
from traces.tests.conftest import make_log

from .conftest import entra_provider, provider
from .test_pages import key_sign_in, page  # noqa: F401 (the Chromium fixture)

# Each control, visible or not: how it is named (its <label>s, aria-label, aria-labelledby, a button's text).
CONTROLS = """() => [...document.querySelectorAll("input, select, textarea, button")]
  .filter(el => el.type !== "hidden")
  .map((el, i) => {
    el.dataset.a11y = i;
    const named = (el.labels && el.labels.length > 0) || !!(el.getAttribute("aria-label") || "").trim()
      || (el.getAttribute("aria-labelledby") || "").split(/\\s+/).some(id => id && document.getElementById(id))
      || (el.tagName === "BUTTON" && !!el.textContent.trim());
    return {i, named, html: el.outerHTML.slice(0, 160)};
  })"""
# Each label tied to a control, by index.
LABELS = """() => [...document.querySelectorAll("label")].filter(l => l.control).map((l, i) => {
  l.dataset.a11yLabel = i; return i; })"""


def check_page(page):
    controls = page.evaluate(CONTROLS)
    assert controls, "no controls found"
    unnamed = [c["html"] for c in controls if not c["named"]]
    assert not unnamed, f"controls without a label: {unnamed}"
    for c in controls:  # Chromium's own accessible name, for the ones on screen
        control = page.locator(f'[data-a11y="{c["i"]}"]')
        if control.is_visible():
            expect(control).to_have_accessible_name(re.compile(r"\S"))
    clicked = 0
    for i in page.evaluate(LABELS):
        label = page.locator(f'[data-a11y-label="{i}"]')
        if not label.is_visible():
            continue
        label.click(position={"x": 3, "y": 3})  # the label's own text, not the control it may wrap
        assert label.evaluate("l => document.activeElement === l.control"), label.evaluate("l => l.outerHTML")
        clicked += 1
    return len(controls), clicked


def test_the_sign_in_page_labels_every_control(page, gateway, configure, op):  # noqa: F811
    configure(provider(op), entra_provider(op))
    page.goto(gateway.management_url + "/dashboard/sso_login.html")
    controls, clicked = check_page(page)
    assert controls >= 4 and clicked >= 1  # two SSO buttons, the key field, its submit button


def test_the_sso_config_page_labels_every_provider_field(page, gateway, configure, op, master_key):  # noqa: F811
    configure(provider(op), provider(op, name="okta-main", type="okta"), entra_provider(op),
              entra_provider(op, name="gov", issuer=op.entra_issuer()))
    key_sign_in(page, gateway, master_key, "/dashboard/sso_config.html")
    page.wait_for_url(re.compile(r"/dashboard/sso_config\.html$"))
    expect(page.locator("#providers .provider")).to_have_count(4)
    assert page.locator("#provider-4-issuer").input_value() == op.entra_issuer()  # Entra's issuer is editable
    page.click("button[data-add=oidc]")  # a card made by the script, not from the saved config
    expect(page.locator("#providers .provider")).to_have_count(5)
    controls, clicked = check_page(page)
    # Every card's fields are tied to their own label: 8 or 9 per card (the tenant id only for Entra).
    assert clicked >= 5 * 8 + 3, clicked
    ids = page.eval_on_selector_all("#providers [data-f]", "els => els.map(e => e.id)")
    assert len(ids) == len(set(ids)) == 5 * 9


def test_the_traces_page_labels_every_control(page, gateway, master_key, sso_clean):  # noqa: F811
    VASLog.objects.bulk_create([make_log(), make_log(provider="anthropic")])
    key_sign_in(page, gateway, master_key)
    page.wait_for_url(re.compile(r"/dashboard/traces\.html$"))
    page.locator("#rows tr.row").first.click()  # the detail panel's tabs are made by the script
    page.locator("tr.detail .tabpane").first.wait_for()
    controls, clicked = check_page(page)
    assert controls >= 10 and clicked >= 2  # provider and cache filters
