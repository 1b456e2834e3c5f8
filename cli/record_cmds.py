"""Commands for the everyday records: accounts, contacts, visits, notes, and the product list.

Each command parses its options, calls one engine method and prints the result with ``emit``.
"""


from typing import Annotated

import typer

from cli.common import (
    All,
    Assignments,
    Json,
    Limit,
    edit_record,
    fields,
    local_times,
    open_device,
    parse_assignments,
    shown_local,
    sub_app,
)
from cli.output import emit, emit_list, page_size

# An ID is a record's id, the start of it, its short id (tables show it), or for accounts and
# contacts their external ref or exact name (docs/cli.md, "Naming a record").
AccountOpt = Annotated[str, typer.Option("--account", metavar="ID",
                                         help="The account: its id or short id, external ref or name.")]
AccountFilter = Annotated[str | None, typer.Option("--account", metavar="ID", help="Only this account's records.")]
Text = Annotated[str | None, typer.Option(metavar="TEXT")]
RecordId = Annotated[str, typer.Argument(metavar="ID", help="Its id or short id (or an account's external ref or name).")]


# -- accounts ---------------------------------------------------------------------------------
account_app = sub_app("Add, change, list and remove accounts (the shops a rep visits).",
                      example='crm account add --name "Corner Store 42" --city Leeds')
ACCOUNT_COLUMNS = ("id", "name", "city", "postcode", "owner")


@account_app.command("add")
def account_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="The account's name.")],
    address: Text = None,
    city: Text = None,
    postcode: Text = None,
    phone: Text = None,
    email: Text = None,
    external_ref: Annotated[str | None, typer.Option(help="Its id in another system.")] = None,
    owner: Annotated[str | None, typer.Option(help="Owning rep [default: this device's rep].")] = None,
    as_json: Json = False,
) -> None:
    """Add an account; prints its id.

    \b
    Example:
      crm account add --name "Corner Store 42" --city Leeds --json
    """
    with open_device(ctx) as device:
        account = device.create("account", fields(
            name=name, address=address, city=city, postcode=postcode, phone=phone, email=email,
            external_ref=external_ref, owner=owner))
    emit(account, as_json=as_json, text=account["id"])


@account_app.command("edit")
def account_edit(
    ctx: typer.Context,
    account_id: RecordId,
    name: Text = None,
    address: Text = None,
    city: Text = None,
    postcode: Text = None,
    phone: Text = None,
    email: Text = None,
    external_ref: Text = None,
    owner: Text = None,
    assignments: Assignments = None,
    as_json: Json = False,
) -> None:
    """Change an account's fields; only the fields given change.

    An empty value (--city "" or --set city=) clears an optional field.

    \b
    Example:
      crm account edit 0190c3e2-... --city York --set phone=
    """
    changes = {**fields(name=name, address=address, city=city, postcode=postcode, phone=phone,
                        email=email, external_ref=external_ref, owner=owner),
               **parse_assignments(assignments or [])}
    edit_record(ctx, "account", account_id, changes, as_json)


@account_app.command("ls")
def account_ls(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(metavar="TEXT", help="Only names holding these words (their starts).")] = None,
    city: Annotated[str | None, typer.Option(metavar="TEXT", help="Only accounts in this city.")] = None,
    postcode: Annotated[str | None, typer.Option(metavar="TEXT", help="Only postcodes starting so.")] = None,
    limit: Limit = None,
    every: All = False,
    deleted: Annotated[bool, typer.Option("--deleted", help="Include deleted accounts.")] = False,
    as_json: Json = False,
) -> None:
    """List accounts, oldest first; the filters ignore case and accents (--city leeds finds Leeds).

    \b
    Example:
      crm account ls --city leeds --limit 20
      crm account ls --name "corner sto" --postcode LS1
    """
    match = fields(name=name, city=city, postcode=postcode)
    with open_device(ctx) as device:
        accounts, total = device.list_page("account", match=match, include_deleted=deleted,
                                           limit=page_size(limit, every, as_json=as_json))
    emit_list(accounts, total, as_json=as_json, columns=ACCOUNT_COLUMNS + (("deleted",) if deleted else ()))


@account_app.command("show")
def account_show(ctx: typer.Context, account_id: RecordId,
                 as_json: Json = False) -> None:
    """Show one account with how many contacts, visits, orders and notes it has.

    \b
    Example:
      crm account show 0190c3e2-...
    """
    with open_device(ctx) as device:
        account = device.get("account", account_id)
    emit(account, as_json=as_json)


@account_app.command("rm")
def account_rm(ctx: typer.Context, account_id: RecordId,
               as_json: Json = False) -> None:
    """Delete an account (a tombstone that syncs like any other change).

    \b
    Example:
      crm account rm 0190c3e2-...
    """
    with open_device(ctx) as device:
        result = device.delete("account", account_id)
    emit(result, as_json=as_json, text=f"deleted account {result['id']}")


# -- contacts ---------------------------------------------------------------------------------
contact_app = sub_app("Add and list the people at an account.",
                      example='crm contact add --account ID --name "Sam Patel"')


@contact_app.command("add")
def contact_add(
    ctx: typer.Context,
    account: AccountOpt,
    name: Annotated[str, typer.Option(help="The contact's name.")],
    role: Text = None,
    email: Text = None,
    phone: Text = None,
    as_json: Json = False,
) -> None:
    """Add a contact to an account; prints its id.

    \b
    Example:
      crm contact add --account 0190c3e2-... --name "Sam Patel" --role buyer
    """
    with open_device(ctx) as device:
        contact = device.create("contact", fields(account=account, name=name, role=role, email=email,
                                                  phone=phone))
    emit(contact, as_json=as_json, text=contact["id"])


@contact_app.command("edit")
def contact_edit(ctx: typer.Context, contact_id: RecordId, assignments: Assignments = None,
                 as_json: Json = False) -> None:
    """Change a contact's fields (name, role, email, phone, external_ref).

    \b
    Example:
      crm contact edit 0190c3e4-... --set role=owner --set phone=
    """
    edit_record(ctx, "contact", contact_id, parse_assignments(assignments or []), as_json)


@contact_app.command("ls")
def contact_ls(ctx: typer.Context, account: AccountFilter = None, limit: Limit = None, every: All = False,
             as_json: Json = False) -> None:
    """List contacts.

    \b
    Example:
      crm contact ls --account 0190c3e2-...
    """
    with open_device(ctx) as device:
        contacts, total = device.list_page("contact", parent=account, limit=page_size(limit, every, as_json=as_json))
    emit_list(contacts, total, as_json=as_json, columns=("id", "account", "name", "role", "email", "phone"))


# -- visits -----------------------------------------------------------------------------------
visit_app = sub_app("Log and list visits to accounts.",
                    example='crm visit log --account ID --outcome "met the buyer"')


@visit_app.command("log")
def visit_log(
    ctx: typer.Context,
    account: AccountOpt,
    outcome: Annotated[str, typer.Option(help="What came of the visit.")],
    at: Annotated[str | None, typer.Option(metavar="ISO", help="When, ISO 8601 [default: now].")] = None,
    duration: Annotated[str | None, typer.Option(metavar="MIN", help="Minutes spent.")] = None,
    notes: Text = None,
    lat: Annotated[str | None, typer.Option(metavar="DEG", help="Latitude.")] = None,
    lon: Annotated[str | None, typer.Option(metavar="DEG", help="Longitude.")] = None,
    as_json: Json = False,
) -> None:
    """Log a visit to an account; prints its id.

    \b
    Example:
      crm visit log --account 0190c3e2-... --outcome "met the buyer" --duration 20
    """
    with open_device(ctx) as device:
        visit = device.create("visit", local_times(ctx, "visit", fields(
            account=account, outcome=outcome, at=at, duration_min=duration, notes=notes, lat=lat, lon=lon)))
    emit(visit, as_json=as_json, text=visit["id"])


@visit_app.command("edit")
def visit_edit(ctx: typer.Context, visit_id: RecordId, assignments: Assignments = None,
               as_json: Json = False) -> None:
    """Change a visit's fields (at, outcome, duration_min, notes, lat, lon).

    \b
    Example:
      crm visit edit 0190c3e3-... --set outcome="order next week"
    """
    edit_record(ctx, "visit", visit_id, parse_assignments(assignments or []), as_json)


@visit_app.command("ls")
def visit_ls(ctx: typer.Context, account: AccountFilter = None, limit: Limit = None, every: All = False,
             as_json: Json = False) -> None:
    """List visits.

    \b
    Example:
      crm visit ls --account 0190c3e2-...
    """
    with open_device(ctx) as device:
        visits, total = device.list_page("visit", parent=account, limit=page_size(limit, every, as_json=as_json))
    emit_list(visits if as_json else shown_local(ctx, "visit", visits), total, as_json=as_json,
              columns=("id", "account", "at", "outcome", "duration_min", "rep"))


# -- notes ------------------------------------------------------------------------------------
note_app = sub_app("Add and list notes on accounts, visits and orders.",
                   example='crm note add --account ID --text "Wants a callback Tuesday"')


@note_app.command("add")
def note_add(
    ctx: typer.Context,
    text: Annotated[str, typer.Option(help="The note.")],
    account: Annotated[str | None, typer.Option(metavar="ID", help="Attach to this account.")] = None,
    visit: Annotated[str | None, typer.Option(metavar="ID", help="Attach to this visit.")] = None,
    order: Annotated[str | None, typer.Option(metavar="ID", help="Attach to this order.")] = None,
    as_json: Json = False,
) -> None:
    """Add a note to exactly one of an account, a visit or an order; prints its id.

    \b
    Example:
      crm note add --account 0190c3e2-... --text "Wants a callback Tuesday"
    """
    with open_device(ctx) as device:
        note = device.add_note(text, account=account, visit=visit, order=order)
    emit(note, as_json=as_json, text=note["id"])


@note_app.command("ls")
def note_ls(ctx: typer.Context, account: AccountFilter = None, limit: Limit = None, every: All = False,
             as_json: Json = False) -> None:
    """List notes.

    \b
    Example:
      crm note ls --account 0190c3e2-...
    """
    with open_device(ctx) as device:
        notes, total = device.list_page("note", parent=account, limit=page_size(limit, every, as_json=as_json))
    emit_list(notes if as_json else shown_local(ctx, "note", notes), total, as_json=as_json,
              columns=("id", "account", "at", "text", "visit", "order"))


# -- products ---------------------------------------------------------------------------------
product_app = sub_app("The product catalogue (it arrives from the server by sync).",
                      example="crm product ls --json")


@product_app.callback()
def product() -> None:
    """The product catalogue (it arrives from the server by sync)."""


@product_app.command("ls")
def product_ls(ctx: typer.Context, limit: Limit = None, every: All = False, as_json: Json = False) -> None:
    """List the products this device has.

    \b
    Example:
      crm product ls --json
    """
    with open_device(ctx) as device:
        products, total = device.list_page("product", limit=page_size(limit, every, as_json=as_json))
    emit_list(products, total, as_json=as_json, columns=("id", "sku", "name", "price", "currency"))


# -- search -----------------------------------------------------------------------------------
search_app = sub_app("Find accounts, contacts and notes by any words, ignoring case and accents.",
                     example='crm search "cafe muller"')


@search_app.command("search")
def search(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(metavar="TEXT", help="Words to find (the start of each is enough).")],
    limit: Limit = None,
    every: All = False,
    as_json: Json = False,
) -> None:
    """Find accounts, contacts and notes holding every word of TEXT (a word's start is enough),
    ignoring case and accents: "zurich" finds "ZÜRICH", "lodz" finds "Łódź".

    \b
    Example:
      crm search "cafe muller"
      crm search leeds --all --json
    """
    with open_device(ctx) as device:
        rows, total = device.search(text, limit=page_size(limit, every, as_json=as_json))
    emit_list(rows, total, as_json=as_json, columns=("entity", "id", "name", "detail", "account"))
