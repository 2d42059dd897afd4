// One image panel of the viewer: a QGraphicsView whose zoom and scroll follow the other panels.
#pragma once

#include <QGraphicsPixmapItem>
#include <QGraphicsView>
#include <QList>
#include <QPointer>

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
