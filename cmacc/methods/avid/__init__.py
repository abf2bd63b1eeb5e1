"""The AVID family: memory banks and NCE (AVID's Eqs. 1-3) and Cross-Modal Agreement (AVID-CMA).

model.py      AVID: banks, NCE with a fixed Z, uniform or active negatives, CMA's terms
positives.py  uniform draws outside an excluded set; CMA's positive sets by agreement
family.py     what the training engine asks of the family: build, bank init, positive sets
checks.py     the family's config checks (torch-free)
"""
