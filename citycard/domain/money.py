"""Money is integer fen (1 yuan = 100 fen). Never floats."""

FEN_PER_YUAN = 100


def percent_of_fen(amount_fen: int, percent: int) -> int:
    """``percent`` % of ``amount_fen``, rounded half up to the fen.

    The city's one rounding rule for every percentage fare (card 91 %, pass 50 %, ...):
    182 = percent_of_fen(200, 91); 137 = percent_of_fen(150, 91) (136.5 rounds up).
    """
    if amount_fen < 0 or percent < 0:
        raise ValueError("amount_fen and percent must be >= 0")
    return (amount_fen * percent + 50) // 100


def format_yuan(amount_fen: int) -> str:
    sign = "-" if amount_fen < 0 else ""
    whole, fen = divmod(abs(amount_fen), FEN_PER_YUAN)
    return f"{sign}{whole}.{fen:02d}"
