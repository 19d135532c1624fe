"""Glossary: the words the lab's pages use, in plain language for clinicians and teachers."""

import streamlit as st

st.set_page_config(page_title="Glossary · ICH lab", layout="wide")
st.title("Glossary")
st.caption("The words these pages use, in plain language.")

TERMS = {
    "Exam label (weak label)": "One yes/no answer per scan: does this head CT show intracranial hemorrhage? "
    "Cheap (one read, often taken from the report). The *weak* learner is trained on these only.",
    "Slice label (strong label)": "One yes/no answer per image slice. Costs a reader more time per exam; the "
    "*strong* learner is trained on these. *Mixed* spends part of the budget on each kind.",
    "Label budget": "How many labels a run may buy: exams for weak, slices for strong. Every label used to "
    "choose the model (validation) is part of it.",
    "Paid validation": "A quarter of the bought labels is held back to choose the training epoch and learning "
    "rate, and counted in the cost. With fewer than 4 held-back labels of a class the run uses a fixed, "
    "label-free schedule instead. *Free* validation (the reference study's choice) uses a fully labelled "
    "extra split, which the planner adds to the cost.",
    "Label noise": "Labels from a cheaper, fallible source (a script mining reports, one hurried reader). "
    "*Sensitivity* 90% means 1 in 10 truly positive labels comes back negative; *specificity* 97% means 3 in "
    "100 truly negative labels come back positive. The lab flips exactly that share of the bought labels and "
    "always tests against the clean truth. *Majority of 3 reads*: each label is read three times, independently, "
    "and the majority is kept — fewer wrong labels at three times the price. *Recorded readers* (CQ500's R1, R2, "
    "R3): the labels a real reader gave, or the majority of the three.",
    "Acquisition strategy": "Which exams or slices to send to the reader. *At random* is the reference study's "
    "draw. *Uncertainty* buys in rounds: the model trained on the labels bought so far picks the scans it is least "
    "sure about. *Coreset* picks the scans least like anything bought yet. *Attention* (slice labels): a weak "
    "model trained on a few exam labels points at the slices it looks at, and the reader only confirms them. None "
    "ever looks at a label it has not paid for.",
    "AUC (area under the ROC curve)": "How well scores separate exams with and without hemorrhage: 0.5 is a "
    "coin toss, 1.0 ranks every bleed above every normal exam. It does not depend on a threshold.",
    "Sensitivity and specificity at an operating point": "Pick a score threshold; sensitivity is the share of "
    "bleeds called positive, specificity the share of normal exams called negative. The lab fixes the "
    "threshold on validation labels and only then reads both numbers off the test split.",
    "95% CI (confidence interval)": "The range that the true value lies in with 95% confidence, given the "
    "exams and seeds measured. Two arms whose intervals overlap widely may not really differ.",
    "Seed": "One repeat of a run with a different random draw of which labels are bought (and of the "
    "training order). The spread over seeds shows how much luck in the draw moves the result.",
    "DeLong test": "A test of whether two AUCs measured on the same exams differ by more than chance "
    "(DeLong et al. 1988). The Results page reports it as counts of comparisons with p < 0.05.",
    "Learning curve": "AUC against the number of labels bought, fitted as AUC(n) = a − b·n^(−c). The planner "
    "reads off it how many labels reach a target AUC.",
    "Multiple-instance learning (MIL) and attention": "The weak learner sees a scan as a bag of slices with one "
    "label. Attention weights say which slices it relied on; they are shown as the strip above each exam.",
    "Grad-CAM and Integrated Gradients": "Two ways to draw which pixels moved the score. Grad-CAM is coarse and "
    "fast (the last feature map); Integrated Gradients is pixel-level and slower. Neither is a segmentation.",
    "Dice": "Overlap between a heatmap (thresholded) and the true bleed mask: 0 none, 1 identical.",
    "Pointing game": "Whether the hottest point of a heatmap falls inside the true bleed.",
    "Out-of-distribution (OOD) warning": "Your series looks unlike the scans the model was trained on (another "
    "body part, scanner or protocol): its score is shown greyed and should not be trusted.",
    "No ground truth vs. no lesion": "*No ground truth*: nobody labelled this series, so the lab cannot say "
    "whether the model is right. *No lesion*: the reference labels say there is no bleed on this slice.",
    "Phantom": "A synthetic head CT written as real DICOM, with known bleeds. The lab's default data set: it "
    "lets a study run offline, but conclusions on real scans need real scans.",
}

query = st.text_input("Find a term", key="glossary_query", placeholder="e.g. AUC, noise, Dice")
shown = {k: v for k, v in TERMS.items() if query.strip().lower() in (k + " " + v).lower()}
if not shown:
    st.info(f"No entry mentions {query!r}. Clear the search box to see every term.")
for term, text in shown.items():
    st.markdown(f"**{term}** — {text}")
