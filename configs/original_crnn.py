# Results table row 4, the original's best: CRNN, lr 0.001, no augmentation, 30 epochs -> 56% (6220 s).
include("original_recipe.py")
model = "crnn"
lr = 0.001
epochs = 30
