# Results table row 3: CNN2D, lr 0.001, no augmentation, no weight decay, 30 epochs -> 49% (5180 s).
include("original_recipe.py")
model = "cnn2d"
lr = 0.001
epochs = 30
