// One image panel of the viewer: a QGraphicsView whose zoom and scroll follow the other panels.
#pragma once

#include <QGraphicsPixmapItem>
#include <QGraphicsView>
#include <QLabel>
#include <QList>
#include <QPointer>

/// A label showing an image scaled to fit (aspect kept), rescaled whenever the label is resized,
/// so the side insets follow the window instead of keeping the size of their first showing.
class FittedImageLabel : public QLabel
{
    Q_OBJECT
public:
    explicit FittedImageLabel(Qt::TransformationMode mode, QWidget* parent = nullptr);
    void setImage(const QImage& image);
    void clearImage();

protected:
    void resizeEvent(QResizeEvent* event) override;

private:
    void rescale();
    QImage image_;
    Qt::TransformationMode mode_;
};

/// A word-wrapped label whose minimum height follows its text at its width: layouts (the dock's
/// scroll area) do not ask wrapped labels for their height-for-width minimum, so a squeezed
/// window drew them over each other.
class WrappedLabel : public QLabel
{
    Q_OBJECT
public:
    explicit WrappedLabel(const QString& text = QString(), QWidget* parent = nullptr);
    void setWrappedText(const QString& text);

protected:
    void resizeEvent(QResizeEvent* event) override;

private:
    void fitHeight();
    bool fitting_ = false;
};

/// A one-line label that elides its text at the right when narrow (the full text is its
/// tooltip) instead of forcing the window wider or cutting a word in half.
class ElidedLabel : public QLabel
{
    Q_OBJECT
public:
    explicit ElidedLabel(QWidget* parent = nullptr);
    void setFullText(const QString& text);
    QString fullText() const { return full_; }
    QSize minimumSizeHint() const override { return QSize(40, QLabel::minimumSizeHint().height()); }

protected:
    void resizeEvent(QResizeEvent* event) override;

private:
    void elide();
    QString full_;
};

/// A panel view: wheel zooms, drag pans, a click (press and release without moving) reports
/// the scene pixel. Zoom and pan are mirrored to every view of the same ViewSync.
class PanelView : public QGraphicsView
{
    Q_OBJECT
public:
    explicit PanelView(QWidget* parent = nullptr);
    void setImage(const QImage& image);
    QImage image() const { return image_; }

signals:
    void zoomRequested(double factor, QPoint viewportAnchor);
    void pixelClicked(QPoint scenePixel);

protected:
    void wheelEvent(QWheelEvent* event) override;
    void mousePressEvent(QMouseEvent* event) override;
    void mouseReleaseEvent(QMouseEvent* event) override;

private:
    QGraphicsScene scene_;
    QGraphicsPixmapItem* item_;
    QImage image_;
    QPoint pressPos_;
};

/// Keeps the transforms and scroll positions of several PanelViews equal (panels show images of
/// one size, so equal scroll values mean equal regions).
class ViewSync : public QObject
{
    Q_OBJECT
public:
    explicit ViewSync(QObject* parent = nullptr) : QObject(parent) {}
    void add(PanelView* view);
    void zoom(double factor, PanelView* source, QPoint anchor);
    void fitAll();
    double scale() const;

private:
    void mirrorScroll(PanelView* source);
    QList<QPointer<PanelView>> views_;
    bool syncing_ = false;
};
