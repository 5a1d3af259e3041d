"""Column and table names shared by every stage (kept free of imports so the code location loads fast)."""

EVENT_ID = "event_id"
EVENT_TS = "event_timestamp"
LABEL = "label"
EVENTS_VIEW = "events"
FEATURE_SERVICE = "model_inputs"
CHALLENGER = "challenger"
CHAMPION = "champion"

ROLLED_BACK_TAG = "mlops.canary"  # model-version tag: started | promoted | rolled_back
ROLLED_BACK = "rolled_back"
CANARY_REASON_TAG = "mlops.canary_reason"


def lookup_view_name(table: str) -> str:
    return f"lookup_{table}"
