# Results table row 5: CRNN, lr 0.01, no augmentation, no weight decay, 30 epochs -> 12% (6220 s):
# the learning rate is too high and the model predicts one genre.
include("original_recipe.py")
model = "crnn"
lr = 0.01
epochs = 30
