"""Order commands: a draft order with lines, then submit or cancel it.

A line is written ``SKU:QTY[:UNIT_PRICE]``; without a price the catalogue price is used.
"""


from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import typer

from cli.common import (
    All,
    Assignments,
    Json,
    Limit,
    edit_record,
    fields,
    invalid,
    open_device,
    parse_assignments,
    shown_local,
    sub_app,
)
from cli.output import emit, emit_list, page_size

LINE_HELP = "An order line SKU:QTY[:UNIT_PRICE]; the catalogue price when no price is given."
OrderId = Annotated[str, typer.Argument(metavar="ID", help="The order's id.")]

order_app = sub_app("Take orders: add a draft with lines, then submit or cancel it.",
                    example="crm order add --account ID --line SKU-1:3:2.50")


def parse_line(text: str) -> dict[str, Any]:
    """``SKU:QTY[:UNIT_PRICE]`` as a line dict; the error names the part that is wrong."""
    parts = [part.strip() for part in text.split(":")]
    if len(parts) not in (2, 3):
        raise invalid(f"--line {text!r}: expected SKU:QTY or SKU:QTY:UNIT_PRICE", line=text)
    sku, quantity = parts[0], parts[1]
    if not sku:
        raise invalid(f"--line {text!r}: the SKU is empty", line=text, part="sku")
    if not (quantity.isascii() and quantity.isdigit()):
        raise invalid(f"--line {text!r}: quantity {quantity!r} is not a whole number",
                      line=text, part="quantity")
    if len(quantity) > 18:  # int() refuses over 4,300 digits; the domain's limit is far below this
        raise invalid(f"--line {text[:60]!r}...: quantity is far too large", line=text[:60], part="quantity")
    line: dict[str, Any] = {"sku": sku, "quantity": int(quantity), "unit_price": None}
    if len(parts) == 3:
        try:
            Decimal(parts[2])
        except InvalidOperation:
            raise invalid(f"--line {text!r}: unit price {parts[2]!r} is not a number "
                          "(leave out :UNIT_PRICE to use the catalogue price)",
                          line=text, part="unit_price") from None
        line["unit_price"] = parts[2]
    return line


@order_app.command("add")
def order_add(
    ctx: typer.Context,
    account: Annotated[str, typer.Option(metavar="ID", help="The account ordering.")],
    lines: Annotated[list[str] | None, typer.Option("--line", metavar="SKU:QTY[:PRICE]", help=LINE_HELP)] = None,
    currency: Annotated[str | None, typer.Option(help="Three-letter currency code [default: GBP].")] = None,
    as_json: Json = False,
) -> None:
    """Add a draft order with its lines; prints its id.

    \b
    Example:
      crm order add --account 0190c3e2-... --line SKU-1:3:2.50 --line SKU-2:1
    """
    parsed = [parse_line(text) for text in lines or []]
    with open_device(ctx) as device:
        order = device.add_order(fields(account=account, currency=currency), parsed)
    emit(order, as_json=as_json, text=order["id"])


@order_app.command("add-line")
def order_add_line(
    ctx: typer.Context,
    order_id: OrderId,
    line: Annotated[str, typer.Option("--line", metavar="SKU:QTY[:PRICE]", help=LINE_HELP)],
    as_json: Json = False,
) -> None:
    """Add a line to a draft order; prints the line's id.

    \b
    Example:
      crm order add-line 0190c3e5-... --line SKU-9:12:0.99
    """
    parsed = parse_line(line)
    with open_device(ctx) as device:
        added = device.add_order_line(order_id, parsed)
    emit(added, as_json=as_json, text=added["id"])


@order_app.command("edit")
def order_edit(ctx: typer.Context, order_id: OrderId, assignments: Assignments = None,
               as_json: Json = False) -> None:
    """Change an order's currency or placed_at (status changes with submit and cancel).

    \b
    Example:
      crm order edit 0190c3e5-... --set currency=EUR
    """
    edit_record(ctx, "order", order_id, parse_assignments(assignments or []), as_json)


line_app = sub_app("Change or remove a line of a draft order.",
                   example="crm order line edit ORDER LINE --quantity 4")
order_app.add_typer(line_app, name="line")
LineId = Annotated[str, typer.Argument(metavar="LINE", help="The line's id (as `crm order show` lists it).")]


@line_app.command("edit")
def order_line_edit(
    ctx: typer.Context,
    order_id: OrderId,
    line_id: LineId,
    quantity: Annotated[str | None, typer.Option(metavar="QTY", help="The new quantity.")] = None,
    price: Annotated[str | None, typer.Option(metavar="PRICE", help="The new unit price.")] = None,
    as_json: Json = False,
) -> None:
    """Change a draft order's line: its quantity, its unit price or both; prints the line's id.

    \b
    Example:
      crm order line edit 0190c3e5-... 0190c3e6-... --quantity 4 --price 2.40
    """
    with open_device(ctx) as device:
        line = device.edit_order_line(order_id, line_id, quantity=quantity, unit_price=price)
    emit(line, as_json=as_json, text=line["id"])


@line_app.command("rm")
def order_line_rm(ctx: typer.Context, order_id: OrderId, line_id: LineId, as_json: Json = False) -> None:
    """Remove a line from a draft order.

    \b
    Example:
      crm order line rm 0190c3e5-... 0190c3e6-...
    """
    with open_device(ctx) as device:
        result = device.remove_order_line(order_id, line_id)
    emit(result, as_json=as_json, text=f"removed line {result['id']}")


def _set_status(ctx: typer.Context, order_id: str, status: str, as_json: bool) -> None:
    with open_device(ctx) as device:
        order = device.set_order_status(order_id, status)
    emit(order, as_json=as_json, text=f"order {order['id']} {order['status']}")


@order_app.command("submit")
def order_submit(ctx: typer.Context, order_id: OrderId, as_json: Json = False) -> None:
    """Submit a draft order; its lines can no longer change.

    \b
    Example:
      crm order submit 0190c3e5-...
    """
    _set_status(ctx, order_id, "submitted", as_json)


@order_app.command("cancel")
def order_cancel(ctx: typer.Context, order_id: OrderId, as_json: Json = False) -> None:
    """Cancel an order (draft or submitted).

    \b
    Example:
      crm order cancel 0190c3e5-...
    """
    _set_status(ctx, order_id, "cancelled", as_json)


@order_app.command("ls")
def order_ls(
    ctx: typer.Context,
    account: Annotated[str | None, typer.Option(metavar="ID", help="Only this account's orders.")] = None,
    limit: Limit = None,
    every: All = False,
    as_json: Json = False,
) -> None:
    """List orders with their status and total.

    \b
    Example:
      crm order ls --account 0190c3e2-...
    """
    with open_device(ctx) as device:
        orders, total = device.list_page("order", parent=account, limit=page_size(limit, every, as_json=as_json))
    if as_json:
        emit(orders, as_json=True)
    else:
        rows = [{**order, "lines": len(order["lines"])} for order in shown_local(ctx, "order", orders)]
        emit_list(rows, total, as_json=False,
                  columns=("id", "account", "status", "lines", "total", "currency", "placed_at"))


@order_app.command("show")
def order_show(ctx: typer.Context, order_id: OrderId, as_json: Json = False) -> None:
    """Show one order with its lines and total.

    \b
    Example:
      crm order show 0190c3e5-...
    """
    with open_device(ctx) as device:
        order = device.get("order", order_id)
    emit(order if as_json else shown_local(ctx, "order", order), as_json=as_json)
