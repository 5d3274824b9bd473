"""`meshllm admin usage`: a tenant's calls, tokens and spend in one month."""
from typing import Annotated

import typer
from rich.table import Table

from cli.connection import admin_api
from cli.money import dollars
from cli.output import JsonFlag, cell, console, print_json, when
from meshllm.api.auth.v1 import auth_pb2


def _budget_line(response: auth_pb2.GetUsageResponse) -> str:
    committed = dollars(response.reserved_micro_usd)
    if not response.HasField("budget_micro_usd"):
        return f"No monthly budget. Spent and reserved: {committed}."
    return (f"Monthly budget {dollars(response.budget_micro_usd)}: {committed} spent or "
            f"reserved; it starts again {when(response, 'budget_resets')}.")


def usage(ctx: typer.Context,
          tenant_id: Annotated[str, typer.Argument(metavar="TENANT", help="The tenant's id.")],
          period: Annotated[str, typer.Option(
              "--period", metavar="YYYY-MM", help="The month, UTC (default: this one).")] = "",
          model: Annotated[str, typer.Option(
              "--model", help="Only calls to this model.")] = "",
          by_label: Annotated[str, typer.Option(
              "--by-label", metavar="KEY",
              help="One row per value of this label (default: one row per model).")] = "",
          json_output: JsonFlag = False) -> None:
    """Show a tenant's usage in one month, and where its budget stands."""
    response = admin_api(ctx).GetUsage(auth_pb2.GetUsageRequest(
        tenant_id=tenant_id, period=period, model=model, group_by_label=by_label))
    if json_output:
        return print_json(response)
    out = console()
    if not response.rows:
        out.print(f"No calls recorded for tenant {tenant_id} in {response.period}"
                  f"{f' to model {model}' if model else ''}.", markup=False)
    else:
        group = f"Label {by_label}" if by_label else "Model"
        table = Table(group, "Requests", "Prompt tokens", "Completion tokens", "Cost",
                      title=f"Usage of tenant {tenant_id} in {response.period}",
                      show_footer=True)
        total = response.total
        for column, footer in zip(table.columns, ("Total", total.requests, total.prompt_tokens,
                                                  total.completion_tokens,
                                                  dollars(total.cost_micro_usd))):
            column.footer = str(footer)
            column.justify = "left" if column is table.columns[0] else "right"
        for row in response.rows:
            name = row.label_value if by_label else row.model
            table.add_row(cell(name or "(none)"), str(row.requests), str(row.prompt_tokens),
                          str(row.completion_tokens), dollars(row.cost_micro_usd))
        out.print(table)
    out.print(_budget_line(response), markup=False)
