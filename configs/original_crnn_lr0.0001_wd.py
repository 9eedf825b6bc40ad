# Results table row 6: CRNN, lr 0.0001, no augmentation, weight decay 1e-4, 20 epochs -> 47% (3000 s).
include("original_recipe.py")
model = "crnn"
lr = 0.0001
weight_decay = 0.0001
epochs = 20
